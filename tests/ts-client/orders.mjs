// Driven by tests/tests/sources.rs: the published `hyperstack-typescript@0.6.9`
// client watches the `orders` plugin's `Order/list` and derived `Order/open`
// while a PostgreSQL source (`--source orders=postgres://...`) feeds them
// from a table's transactions.
//
// Protocol with the driving test:
//   1. Connect, subscribe to both views, wait for both complete snapshots,
//      print `ready`.
//   2. Read one line from stdin: {"list": {ID: [status, amount, changes]},
//      "open": {ID: [...]}}, the table as the test read it, then wait until
//      the client's stores hold exactly those rows (keys and the three
//      fields; a derived view's deletes must have removed the rest).
//   3. Print one JSON line {"ok":true,"list":N,"open":M,"states":[..]} and
//      exit 0.
// Any connection state other than `connecting` -> `connected` or any socket
// issue fails the run.
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL, VISTA_TIMEOUT_MS (default
// 10000), VISTA_GO_TIMEOUT_MS (default 180000), VISTA_DEBUG=1.

import assert from 'node:assert/strict';
import { harness, checkHealthy, readOneLine, writeStdout } from './lib.mjs';

const NAME = 'orders.mjs';
const h = harness(NAME);
const LIST = 'Order/list';
const OPEN = 'Order/open';
const STACK = {
  name: 'vista-orders',
  url: h.WS_URL,
  views: { Order: { list: { mode: 'list', view: LIST }, open: { mode: 'list', view: OPEN } } },
};
const GO_TIMEOUT_MS = Number(process.env.VISTA_GO_TIMEOUT_MS ?? 180_000);

/** The client's store of `view` as {id: [status, amount, changes]}. */
function rows(hs, view) {
  const out = {};
  for (const key of hs.store.keys(view)) {
    const order = hs.store.get(view, key);
    out[key] = [order.status, Number(order.amount), order.changes];
  }
  return out;
}

async function main() {
  const hs = await h.connect(STACK);
  const complete = new Set();
  hs.onFrame((frame) => {
    if (frame.op === 'snapshot' && frame.complete) complete.add(frame.entity);
  });
  h.pump(hs.views.Order.list.watch(), []);
  h.pump(hs.views.Order.open.watch(), []);
  await h.waitFor('complete snapshots of both views', () => {
    checkHealthy(h);
    assert.ok(complete.has(LIST) && complete.has(OPEN), `complete: ${[...complete]}`);
  });
  await writeStdout('ready\n');

  const expected = JSON.parse(await readOneLine(h, GO_TIMEOUT_MS));
  await h.waitFor('the stores hold exactly the table', () => {
    checkHealthy(h);
    assert.deepEqual(rows(hs, LIST), expected.list, LIST);
    assert.deepEqual(rows(hs, OPEN), expected.open, OPEN);
  });
  checkHealthy(h);
  const states = h.states.map((s) => s.state);
  assert.deepEqual(states, ['connecting', 'connected'], `connection states: ${JSON.stringify(h.states)}`);
  await writeStdout(JSON.stringify({
    ok: true,
    list: Object.keys(expected.list).length,
    open: Object.keys(expected.open).length,
    states,
  }) + '\n');
  h.finish(0);
}

h.run(main);
