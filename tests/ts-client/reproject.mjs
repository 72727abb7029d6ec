// Driven by a Rust integration test that reprojects the `games` plugin (a
// new build scoring twice the damage, rebuilt from the event log) while this
// published `hyperstack-typescript@0.6.9` client stays connected and
// subscribed to `Game/list`. This script ingests nothing: the Rust test does.
//
// Protocol with the driving test:
//   1. Connect, subscribe, wait for the complete snapshot, print `ready`.
//   2. Read one line from stdin: a JSON object {gameId: expectedScore} (the
//      recomputation of the whole log through the new projector), then wait
//      until the client's store holds exactly those games with those scores.
//   3. Print one JSON line {"ok":true,"games":N,"states":[..]} and exit 0.
// Any reconnect or socket issue fails the run.
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL, VISTA_TIMEOUT_MS (default
// 10000), VISTA_GO_TIMEOUT_MS (default 180000), VISTA_DEBUG=1.

import assert from 'node:assert/strict';
import { harness, sleep, checkHealthy, readOneLine, writeStdout } from './lib.mjs';

const NAME = 'reproject.mjs';
const h = harness(NAME);
const VIEW = 'Game/list';
const STACK = { name: 'vista-games', url: h.WS_URL, views: { Game: { list: { mode: 'list', view: VIEW } } } };
const GO_TIMEOUT_MS = Number(process.env.VISTA_GO_TIMEOUT_MS ?? 180_000);




async function main() {
  const hs = await h.connect(STACK);
  let snapshotComplete = false;
  hs.onFrame((frame) => {
    if (frame.entity === VIEW && frame.op === 'snapshot' && frame.complete) snapshotComplete = true;
  });
  const updates = [];
  h.pump(hs.views.Game.list.watch(), updates);
  await h.waitFor(`complete snapshot of ${VIEW}`, () => assert.ok(snapshotComplete));
  checkHealthy(h);
  await writeStdout('ready\n');

  const expected = JSON.parse(await readOneLine(h, GO_TIMEOUT_MS));
  await h.waitFor(`the store equals the recomputation (${Object.keys(expected).length} games)`, () => {
    checkHealthy(h);
    const keys = [...hs.store.keys(VIEW)].sort();
    assert.deepEqual(keys, Object.keys(expected).sort(), `games in the store`);
    for (const key of keys) {
      assert.equal(hs.store.get(VIEW, key)?.score, expected[key], `score of ${key}`);
    }
  });
  checkHealthy(h);
  await writeStdout(JSON.stringify({ ok: true, games: Object.keys(expected).length, states: h.states }) + '\n');
  h.finish(0);
}

main().catch((e) => h.fail(e?.stack ?? String(e)));
