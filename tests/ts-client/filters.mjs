// Drives the published `hyperstack-typescript@0.6.9` client against a running
// Vista host with the `tokens` plugin loaded: `Token.list.watch({filters:
// {symbol: 'SOL'}})` (the client sends the map as `filters` in its subscribe
// message) must leave the client's own store holding exactly the SOL tokens
// through creations, updates that move tokens in and out of the filter,
// changes inside it and deletes. Expects a fresh host (no Token entities).
// Exit 0 and one JSON line on stdout on success.
//
//   VISTA_WS_URL=ws://127.0.0.1:8877 VISTA_HTTP_URL=http://127.0.0.1:8877 node filters.mjs

import assert from 'node:assert/strict';
import { harness, withoutSeq } from './lib.mjs';

const h = harness('filters.mjs');
const VIEW = 'Token/list';
const STACK = {
  name: 'vista-tokens',
  url: h.WS_URL,
  views: { Token: { list: { mode: 'list', view: VIEW } } },
};

const created = (mint, symbol, supply) => ({ type: 'token_created', mint, symbol, decimals: 6, supply });
const supply = (mint, delta) => ({ type: 'supply_changed', mint, delta });
const closed = (mint) => ({ type: 'token_closed', mint });

const PRE_CONNECT = [created('a', 'SOL', 10), created('b', 'BONK', 20), created('c', 'SOL', 30)];
const BATCHES = [
  { label: 'creations in and out of the filter', events: [created('d', 'SOL', 1), created('e', 'WIF', 2)] },
  { label: 'an update moves a token into the filter', events: [created('b', 'SOL', 21)] },
  { label: 'an update moves a token out of the filter', events: [created('a', 'WIF', 11)] },
  { label: 'changes inside and outside the filter', events: [supply('c', 5), supply('e', 7), supply('b', -1)] },
  { label: 'deletes in and out of the filter', events: [closed('d'), closed('e')] },
  { label: 'a token moves back in', events: [created('a', 'SOL', 12)] },
];

const model = new Map();
function apply(e) {
  if (e.type === 'token_created') {
    const old = model.get(e.mint) ?? {};
    model.set(e.mint, { ...old, mint: e.mint, symbol: e.symbol, decimals: e.decimals, supply: e.supply });
  } else if (e.type === 'supply_changed') {
    model.get(e.mint).supply += e.delta;
  } else if (e.type === 'token_closed') {
    model.delete(e.mint);
  }
}
const expected = () => [...model.values()].filter((t) => t.symbol === 'SOL').sort((x, y) => (x.mint < y.mint ? -1 : 1));

function check(hs) {
  const want = expected();
  const keys = [...hs.store.keys(VIEW)].sort();
  assert.deepEqual(keys, want.map((t) => t.mint), 'client store keys');
  for (const t of want) assert.deepEqual(withoutSeq(hs.store.get(VIEW, t.mint)), t, `entity ${t.mint}`);
}

async function main() {
  await h.ingest('tokens', PRE_CONNECT);
  PRE_CONNECT.forEach(apply);
  const hs = await h.connect(STACK);
  const updates = [];
  h.pump(hs.views.Token.list.watch({ filters: { symbol: 'SOL' } }), updates);
  await h.waitFor('snapshot of the SOL tokens', () => check(hs));
  const stages = [{ stage: 'snapshot', keys: expected().map((t) => t.mint) }];
  for (const { label, events } of BATCHES) {
    await h.ingest('tokens', events);
    events.forEach(apply);
    await h.waitFor(label, () => check(hs));
    stages.push({ stage: label, keys: expected().map((t) => t.mint) });
  }
  const deletes = updates.filter((u) => u.type === 'delete').map((u) => u.key);
  for (const key of ['a', 'd']) assert.ok(deletes.includes(key), `no delete update for ${key}`);
  assert.ok(!deletes.includes('e'), 'a token outside the filter was never sent, so never deleted');
  console.log(JSON.stringify({ ok: true, test: 'filters', final: expected().map((t) => t.mint), stages, deletes, socketIssues: h.issues.length }));
  h.finish(0);
}

h.run(main);
