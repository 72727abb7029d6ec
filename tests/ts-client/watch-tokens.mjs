// Driven by the Rust isolation tests (tests/tests/isolation.rs): the
// published `hyperstack-typescript@0.6.9` client stays subscribed to
// `Token/list` (plugin `tokens`) while another plugin's projector crashes,
// overflows, spins... in its child process. This script ingests nothing:
// the Rust test does.
//
// Protocol with the driving test:
//   1. Connect, subscribe to Token/list, wait for the complete snapshot,
//      print `ready`.
//   2. Read one line from stdin: a JSON array of every mint the test
//      ingested (before, during and after the faults), then wait until the
//      client's store holds exactly those keys.
//   3. Print one JSON line {"ok":true,"keys":[..sorted],"states":[..],
//      "updates":N} and exit 0.
// Any connection state other than `connecting` -> `connected` (a
// disconnect, a reconnect, an error) or any socket issue, at any moment
// (also while waiting for the stdin line), fails the run.
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL, VISTA_TIMEOUT_MS (default
// 10000), VISTA_GO_TIMEOUT_MS (default 180000), VISTA_DEBUG=1.

import assert from 'node:assert/strict';
import { harness, checkHealthy, readOneLine, writeStdout } from './lib.mjs';

const NAME = 'watch-tokens.mjs';
const h = harness(NAME);
const VIEW = 'Token/list';
const STACK = { name: 'vista-tokens', url: h.WS_URL, views: { Token: { list: { mode: 'list', view: VIEW } } } };
const GO_TIMEOUT_MS = Number(process.env.VISTA_GO_TIMEOUT_MS ?? 180_000);

async function main() {
  const hs = await h.connect(STACK);
  let snapshotComplete = false;
  hs.onFrame((frame) => {
    if (frame.entity === VIEW && frame.op === 'snapshot' && frame.complete) snapshotComplete = true;
  });
  const updates = [];
  h.pump(hs.views.Token.list.watch(), updates);
  await h.waitFor(`complete snapshot of ${VIEW}`, () => {
    checkHealthy(h);
    assert.ok(snapshotComplete);
  });
  await writeStdout('ready\n');

  const expected = JSON.parse(await readOneLine(h, GO_TIMEOUT_MS));
  const keys = await h.waitFor(`the store holds exactly the ${expected.length} tokens ingested`, () => {
    checkHealthy(h);
    const keys = [...hs.store.keys(VIEW)].sort();
    assert.deepEqual(keys, [...expected].sort(), `keys of ${VIEW}`);
    return keys;
  });
  checkHealthy(h);
  const states = h.states.map((s) => s.state);
  assert.deepEqual(states, ['connecting', 'connected'],
    `connection states (anything else means the client disconnected or reconnected): ${JSON.stringify(h.states)}`);
  assert.ok(hs.isConnected(), 'client is still connected at the end');
  await writeStdout(JSON.stringify({ ok: true, keys, states, updates: updates.length }) + '\n');
  h.finish(0);
}

main().catch((e) => h.fail(e?.stack ?? String(e)));
