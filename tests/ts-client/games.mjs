// Drives the published `hyperstack-typescript@0.6.9` client against a running
// Vista host with the `games` plugin loaded, subscribed to the derived view
// `ActiveGame/latest` (status == "active", startedAt descending, ties by key
// ascending, at most 10), and checks after every ingest batch that the
// client's own sorted list equals the window computed here from the events
// sent: same ids in the same order, same entities (without `_seq`).
//
// Run with:
//   VISTA_WS_URL=ws://127.0.0.1:8877 VISTA_HTTP_URL=http://127.0.0.1:8877 node games.mjs
//
// VISTA_DEBUG=1 prints every frame the client parsed to stderr.
// Expects a fresh host (no Game entities yet): the window is compared exactly.
// Exit 0 and one JSON line on stdout on success; non-zero and a message on
// stderr on failure or timeout.

import assert from 'node:assert/strict';
import { harness, withoutSeq, activeGamesStack } from './lib.mjs';

const h = harness('games.mjs');

const VIEW = 'ActiveGame/latest';
const WINDOW = 10;

const STACK = activeGamesStack(h.WS_URL);

// ---- scripted events -------------------------------------------------------
// Ids are zero-padded so that byte order (server) and localeCompare (client)
// agree on ties. startedAt values are deliberately out of order.

const start = (game, startedAt, players) => ({ type: 'game_started', game, players, startedAt });
const attack = (game, player, damage) => ({ type: 'attack', game, player, damage });
const ended = (game, winner) => ({ type: 'game_ended', game, winner });
const removed = (game) => ({ type: 'game_removed', game });

const PRE_CONNECT = [
  start('g01', 1000, ['ann', 'bob']),
  start('g02', 1030, ['cat', 'dan']),
  start('g03', 1010, ['eve', 'fay']),
];

const BATCHES = [
  {
    // 13 active games: the window fills and g03, g08 and g01 (from the
    // snapshot) end up outside it. g07 and g10 tie on startedAt.
    label: 'more than 10 active games, shuffled startedAt',
    events: [
      start('g04', 1070, ['ann', 'cat']),
      start('g05', 1020, ['bob', 'dan']),
      start('g06', 1100, ['eve', 'ann']),
      start('g07', 1050, ['fay', 'bob']),
      start('g08', 1005, ['cat', 'eve']),
      start('g09', 1090, ['dan', 'fay']),
      start('g10', 1050, ['ann', 'dan']),
      start('g11', 1040, ['bob', 'eve']),
      start('g12', 1080, ['cat', 'fay']),
      start('g13', 1060, ['dan', 'ann']),
    ],
  },
  {
    label: 'attacks on games inside and outside the window',
    events: [
      attack('g06', 'eve', 7),
      attack('g03', 'fay', 4), // outside
      attack('g07', 'bob', 5),
      attack('g06', 'ann', 3),
      attack('g01', 'ann', 2), // outside
      attack('g08', 'cat', 9), // outside
      attack('g02', 'dan', 1),
    ],
  },
  {
    // Two members end: the two next-newest (attacked while outside) are pulled in.
    label: 'two games in the window end',
    events: [
      ended('g09', 'dan'),
      ended('g07', 'fay'),
      attack('g09', 'fay', 11), // an ended game changes: must not come back
    ],
  },
  {
    // A member is removed (the last outsider is pulled in); an ended game is removed.
    label: 'a game in the window is removed',
    events: [
      removed('g12'),
      removed('g07'),
    ],
  },
  {
    // A newest game enters a full window and pushes the oldest out; an old
    // one ties with g05 and pushes out another.
    label: 'newer games push members out',
    events: [
      start('g14', 1200, ['eve', 'bob']),
      attack('g14', 'eve', 6),
      start('g15', 1020, ['fay', 'cat']),
    ],
  },
];

// ---- the model: what the server must compute ---------------------------------

const model = new Map(); // id -> Game
const everRemoved = new Set();

function apply(e) {
  switch (e.type) {
    case 'game_started':
      model.set(e.game, { id: e.game, players: e.players, status: 'active', startedAt: e.startedAt, score: 0, events: [] });
      break;
    case 'attack': {
      const g = model.get(e.game);
      assert.ok(g, `script bug: attack on unknown game ${e.game}`);
      g.score += e.damage;
      g.events = [...g.events, { type: 'attack', player: e.player, damage: e.damage }];
      break;
    }
    case 'game_ended': {
      const g = model.get(e.game);
      assert.ok(g, `script bug: end of unknown game ${e.game}`);
      g.status = 'ended';
      g.winner = e.winner;
      break;
    }
    case 'game_removed':
      assert.ok(model.delete(e.game), `script bug: removal of unknown game ${e.game}`);
      everRemoved.add(e.game);
      break;
    default:
      throw new Error(`script bug: event type ${e.type}`);
  }
}

const byKey = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** The expected ActiveGame/latest window: deep copies, in order. */
function expectedWindow() {
  return [...model.values()]
    .filter((g) => g.status === 'active')
    .sort((a, b) => (b.startedAt - a.startedAt) || byKey(a.id, b.id))
    .slice(0, WINDOW)
    .map((g) => structuredClone(g));
}

// ---- the test --------------------------------------------------------------

function checkClientWindow(hs, expected) {
  const keys = hs.store.keys(VIEW);
  for (const k of keys) {
    assert.ok(!everRemoved.has(k) || model.has(k), `removed game ${k} is still in the client store`);
    const e = hs.store.get(VIEW, k);
    assert.notEqual(e?.status, 'ended', `ended game ${k} is still in the client store`);
  }
  const ids = expected.map((g) => g.id);
  assert.deepEqual(keys, ids, 'client store keys (in its sort order)');
  const list = hs.views.ActiveGame.latest.getSync() ?? [];
  for (const e of list) {
    if ('_seq' in e) assert.equal(typeof e._seq, 'string', `${e.id}: _seq must be a string`);
  }
  assert.deepEqual(list.map((e) => e.id), ids, 'getSync() order');
  assert.deepEqual(list.map(withoutSeq), expected, 'getSync() entities');
}

async function main() {
  // 1. Games exist before the client connects: exercises the snapshot path.
  await h.ingest('games', PRE_CONNECT);
  PRE_CONNECT.forEach(apply);

  // 2. Connect and subscribe.
  const hs = await h.connect(STACK);
  const updates = [];
  h.pump(hs.views.ActiveGame.latest.watch(), updates);

  const frame = await h.waitFor(`'subscribed' frame for ${VIEW}`, () => {
    const f = h.subscribed.get(VIEW);
    assert.ok(f, `no 'subscribed' frame yet for ${VIEW}`);
    return f;
  });
  assert.equal(frame.mode, 'list', `${VIEW} subscribed mode`);
  assert.deepEqual(frame.sort, { field: ['startedAt'], order: 'desc' }, `${VIEW} subscribed sort`);

  const stages = [];
  await h.waitFor('snapshot of the 3 pre-existing games', () => checkClientWindow(hs, expectedWindow()));
  stages.push({ stage: 'snapshot', order: expectedWindow().map((g) => g.id) });

  // 3. Live batches; after each, the client's own view must match the model.
  for (const { label, events } of BATCHES) {
    const before = expectedWindow().map((g) => g.id);
    await h.ingest('games', events);
    events.forEach(apply);
    const expected = expectedWindow();
    await h.waitFor(`window after batch '${label}'`, () => checkClientWindow(hs, expected));
    stages.push({
      stage: label,
      active: [...model.values()].filter((g) => g.status === 'active').length,
      left: before.filter((id) => !expected.some((g) => g.id === id)),
      entered: expected.map((g) => g.id).filter((id) => !before.includes(id)),
    });
  }

  // The scenario must actually exercise what it claims to.
  const [filled, , endedStage, removedStage, pushedStage] = stages.slice(1);
  assert.ok(filled.active > WINDOW, 'script bug: batch 1 must make more than 10 games active');
  assert.ok(endedStage.entered.length === 2, 'script bug: ending two members must pull two games in');
  assert.ok(removedStage.entered.length === 1, 'script bug: removing a member must pull one game in');
  assert.ok(pushedStage.left.length >= 1, 'script bug: a newer game must push one out');

  const deletes = updates.filter((u) => u.type === 'delete').map((u) => u.key);
  for (const id of [...filled.left, ...endedStage.left, ...removedStage.left, ...pushedStage.left]) {
    assert.ok(deletes.includes(id), `no delete update for ${id}, which left ${VIEW}`);
  }

  const final = hs.views.ActiveGame.latest.getSync().map((e) => e.id);
  console.log(JSON.stringify({
    ok: true,
    test: 'games',
    client: 'hyperstack-typescript@0.6.9',
    subscribed: { view: VIEW, mode: frame.mode, sort: frame.sort },
    final,
    stages: stages.slice(1).map(({ stage, left, entered }) => ({ stage, left, entered })),
    updates: { total: updates.length, deletes: deletes.length },
    socketIssues: h.issues.length,
  }));
  h.finish(0);
}

h.run(main);
