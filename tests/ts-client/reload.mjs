// Driven by a Rust integration test that hot-swaps the `games` plugin while
// this published `hyperstack-typescript@0.6.9` client stays connected and
// subscribed to the derived view `ActiveGame/latest`. This script ingests
// nothing: the Rust test does.
//
// Protocol with the driving test:
//   1. Connect, subscribe, wait until the client's window equals EXPECT_BEFORE
//      (getSync() ids in that order, store keys exactly that set), then print
//      the line `ready` on stdout.
//   2. Read one line from stdin (the test writes `go` after the swap), then
//      wait until the window equals EXPECT_AFTER (store keys as a set,
//      getSync() ids in order).
//   3. Print one JSON line {"ok":true,"before":[..],"after":[..],"states":[..],
//      "updates":N} and exit 0.
// Any connection state other than the initial `connecting` -> `connected`
// (reconnecting, disconnected, error, a second connect) or any socket issue
// fails the run ("reconnected"), as does a later `subscribed` frame for the
// view with another sort (the client keeps the first one, so the order check
// would be meaningless).
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL (required, as the other scripts),
// EXPECT_BEFORE, EXPECT_AFTER (required: JSON arrays of game ids, in window
// order), VISTA_TIMEOUT_MS (per wait, default 10000), VISTA_GO_TIMEOUT_MS
// (how long to wait for the stdin line, default 120000), VISTA_DEBUG=1.
// Exit 0 on success; 1 and `reload.mjs: FAIL: ...` on stderr on failure;
// 2 on bad/missing environment.
//
//   EXPECT_BEFORE='["g02","g01"]' EXPECT_AFTER='["g01"]' \
//   VISTA_WS_URL=ws://127.0.0.1:18879 VISTA_HTTP_URL=http://127.0.0.1:18879 node reload.mjs

import assert from 'node:assert/strict';
import { harness, sleep, activeGamesStack, checkHealthy, readOneLine, writeStdout } from './lib.mjs';

const NAME = 'reload.mjs';
const h = harness(NAME);

function idList(name) {
  const raw = process.env[name];
  let value;
  try { value = JSON.parse(raw ?? ''); } catch { value = undefined; }
  if (!Array.isArray(value) || !value.every((x) => typeof x === 'string') || new Set(value).size !== value.length) {
    console.error(`${NAME}: set ${name} to a JSON array of distinct game ids (got ${raw === undefined ? 'nothing' : JSON.stringify(raw)})`);
    process.exit(2);
  }
  return value;
}

const EXPECT_BEFORE = idList('EXPECT_BEFORE');
const EXPECT_AFTER = idList('EXPECT_AFTER');
const GO_TIMEOUT_MS = Number(process.env.VISTA_GO_TIMEOUT_MS ?? 120_000);

const VIEW = 'ActiveGame/latest';
const SORT = { field: ['startedAt'], order: 'desc' };

const STACK = activeGamesStack(h.WS_URL);

const sorted = (ids) => [...ids].sort();

/** Throws unless the client's window is `expected`: getSync() ids in order; store keys as a set. */
function checkWindow(hs, expected) {
  const list = hs.views.ActiveGame.latest.getSync() ?? [];
  const ids = list.map((e) => e?.id);
  const keys = hs.store.keys(VIEW);
  assert.deepEqual(sorted(keys), sorted(expected), `store keys of ${VIEW} (as a set)`);
  assert.deepEqual(ids, expected, `getSync() ids of ${VIEW} (in order)`);
  return ids;
}




async function main() {
  const hs = await h.connect(STACK);

  // Every `subscribed` frame and whether a complete snapshot arrived for VIEW.
  const subscribedFrames = [];
  let snapshotComplete = false;
  hs.onFrame((frame) => {
    if (frame.view === VIEW && frame.op === 'subscribed') subscribedFrames.push(frame);
    if (frame.entity === VIEW && frame.op === 'snapshot' && frame.complete) snapshotComplete = true;
  });

  const updates = [];
  h.pump(hs.views.ActiveGame.latest.watch(), updates);

  const checkSort = () => {
    for (const f of subscribedFrames) {
      assert.deepEqual(f.sort, SORT, `sort of a 'subscribed' frame for ${VIEW} (all: ${JSON.stringify(subscribedFrames)})`);
    }
  };

  await h.waitFor(`'subscribed' frame and complete snapshot for ${VIEW}`, () => {
    assert.ok(subscribedFrames.length > 0, `no 'subscribed' frame yet for ${VIEW}`);
    assert.equal(subscribedFrames[0].mode, 'list', `${VIEW} subscribed mode`);
    assert.ok(snapshotComplete, `no complete snapshot yet for ${VIEW}`);
  });
  checkSort();

  const before = await h.waitFor(`window == EXPECT_BEFORE ${JSON.stringify(EXPECT_BEFORE)}`, () => {
    checkHealthy(h);
    return checkWindow(hs, EXPECT_BEFORE);
  });
  checkHealthy(h);
  await writeStdout('ready\n');

  const go = await readOneLine(h, GO_TIMEOUT_MS);
  if (process.env.VISTA_DEBUG) console.error(`${NAME}: stdin line ${JSON.stringify(go)}`);

  const after = await h.waitFor(`window == EXPECT_AFTER ${JSON.stringify(EXPECT_AFTER)} after the swap`, () => {
    checkHealthy(h);
    checkSort();
    return checkWindow(hs, EXPECT_AFTER);
  });

  checkHealthy(h);
  checkSort();
  const states = h.states.map((s) => s.state);
  assert.deepEqual(states, ['connecting', 'connected'],
    `connection states (anything else means the client reconnected or broke): ${JSON.stringify(h.states)}`);
  assert.ok(hs.isConnected(), 'client is still connected at the end');

  console.log(JSON.stringify({ ok: true, before, after, states, updates: updates.length }));
  h.finish(0);
}

h.run(main);
