// Drives the published `hyperstack-typescript@0.6.9` client against a running
// Vista host with the `tokens` plugin loaded, and checks that the client's own
// store converges to the expected entities.
//
// Run with:
//   VISTA_WS_URL=ws://127.0.0.1:8877 VISTA_HTTP_URL=http://127.0.0.1:8877 node tokens.mjs
//
// VISTA_DEBUG=1 prints every frame the client parsed to stderr.
// Expects a fresh host (no Token entities yet): Token/list is compared exactly.
// Exit 0 and one JSON line on stdout on success; non-zero and a message on
// stderr on failure or timeout.

import assert from 'node:assert/strict';
import { harness, withoutSeq } from './lib.mjs';

const h = harness('tokens.mjs');

// The client only knows `state` and `list` view kinds; an append view is read
// through a list-mode ViewDef (the store is keyed by the frame's `entity`).
const STACK = {
  name: 'vista-tokens',
  url: h.WS_URL,
  views: {
    Token: {
      list: { mode: 'list', view: 'Token/list' },
      state: { mode: 'state', view: 'Token/state' },
    },
    Trade: {
      append: { mode: 'list', view: 'Trade/append' },
    },
  },
};

// ---- scripted events -------------------------------------------------------

const PRE_CONNECT = [
  { type: 'token_created', mint: 'mintA', symbol: 'AAA', decimals: 6, supply: 1000 },
];
const BATCH_1 = [
  { type: 'token_created', mint: 'mintB', symbol: 'BBB', decimals: 9, supply: 5000 },
  { type: 'token_created', mint: 'mintC', symbol: 'CCC', decimals: 0, supply: 7 },
  { type: 'supply_changed', mint: 'mintA', delta: 500 },
  { type: 'trade', id: 't1', mint: 'mintA', price: 1.25, amount: 10 },
  { type: 'trade', id: 't2', mint: 'mintB', price: 0.5, amount: 300 },
];
const BATCH_2 = [
  { type: 'supply_changed', mint: 'mintA', delta: -100 },
  { type: 'trade', id: 't3', mint: 'mintA', price: 1.75, amount: 4 },
  { type: 'token_closed', mint: 'mintC' },
];

const EXPECTED_MINT_A = {
  mint: 'mintA', symbol: 'AAA', decimals: 6, supply: 1400, lastPrice: 1.75,
  recentTrades: [
    { id: 't1', price: 1.25, amount: 10 },
    { id: 't3', price: 1.75, amount: 4 },
  ],
};
const EXPECTED_MINT_B = {
  mint: 'mintB', symbol: 'BBB', decimals: 9, supply: 5000, lastPrice: 0.5,
  recentTrades: [{ id: 't2', price: 0.5, amount: 300 }],
};
const EXPECTED_TRADES = [
  { id: 't1', mint: 'mintA', price: 1.25, amount: 10 },
  { id: 't2', mint: 'mintB', price: 0.5, amount: 300 },
  { id: 't3', mint: 'mintA', price: 1.75, amount: 4 },
];

// ---- the test --------------------------------------------------------------

async function main() {
  // 1. Something exists before the client connects: exercises the snapshot path.
  await h.ingest('tokens', PRE_CONNECT);

  // 2. Connect with the published client.
  const hs = await h.connect(STACK);

  // 3. Subscribe: Token/list (all keys), Token/state key mintA, Trade/append.
  const listUpdates = [];
  const stateUpdates = [];
  const tradeUpdates = [];
  h.pump(hs.views.Token.list.watch(), listUpdates);
  h.pump(hs.views.Token.state.watch('mintA'), stateUpdates);
  h.pump(hs.views.Trade.append.watch(), tradeUpdates);

  const views = ['Token/list', 'Token/state', 'Trade/append'];
  await h.waitFor('subscribed frames for all three views', () => {
    const missing = views.filter((v) => !h.subscribed.has(v));
    assert.deepEqual(missing, [], `no 'subscribed' frame yet for ${missing.join(', ')}`);
  });
  await h.waitFor('snapshot of pre-existing mintA in Token/list and Token/state', () => {
    assert.ok(hs.store.has('Token/list', 'mintA'), 'Token/list store lacks mintA');
    assert.ok(hs.views.Token.state.getSync('mintA'), 'Token/state store lacks mintA');
  });
  const snapshotMintA = withoutSeq(hs.views.Token.state.getSync('mintA'));
  assert.deepEqual(snapshotMintA, { mint: 'mintA', symbol: 'AAA', decimals: 6, supply: 1000 },
    'Token/state mintA after snapshot');

  // 4. Live updates, in two batches so mintC is seen before it is closed.
  await h.ingest('tokens', BATCH_1);
  await h.waitFor('mintB and mintC in Token/list', () => {
    const keys = hs.store.keys('Token/list');
    assert.ok(keys.includes('mintB') && keys.includes('mintC'), `Token/list keys ${JSON.stringify(keys)}`);
  });
  await h.ingest('tokens', BATCH_2);

  // 5. Converge: the client's own store must hold exactly the expected entities.
  const result = await h.waitFor('final client store state', () => {
    const list = hs.views.Token.list.getSync() ?? [];
    const keys = [...hs.store.keys('Token/list')].sort();
    assert.deepEqual(keys, ['mintA', 'mintB'], 'Token/list keys');
    for (const e of list) assert.equal(typeof e._seq, 'string', `Token/list ${e.mint} _seq must be a string`);
    const byMint = Object.fromEntries(list.map((e) => [e.mint, withoutSeq(e)]));
    assert.deepEqual(byMint, { mintA: EXPECTED_MINT_A, mintB: EXPECTED_MINT_B }, 'Token/list entities');

    assert.deepEqual(withoutSeq(hs.views.Token.state.getSync('mintA')), EXPECTED_MINT_A, 'Token/state mintA');

    const trades = (hs.views.Trade.append.getSync() ?? []).map(withoutSeq)
      .sort((a, b) => String(a.id).localeCompare(String(b.id)));
    assert.deepEqual(trades, EXPECTED_TRADES, 'Trade/append entities');
    const arrival = [...new Set(tradeUpdates.map((u) => u.key))];
    assert.deepEqual(arrival, ['t1', 't2', 't3'], 'Trade/append arrival order');

    assert.ok(listUpdates.some((u) => u.type === 'delete' && u.key === 'mintC'), 'no delete update for mintC on Token/list');
    return { listOrder: list.map((e) => e.mint), arrival };
  });

  console.log(JSON.stringify({
    ok: true,
    test: 'tokens',
    client: 'hyperstack-typescript@0.6.9',
    subscribed: Object.fromEntries([...h.subscribed].map(([v, f]) => [v, { mode: f.mode, sort: f.sort ?? null }])),
    tokenList: result.listOrder,
    tradeArrival: result.arrival,
    updates: { list: listUpdates.length, state: stateUpdates.length, trades: tradeUpdates.length },
    socketIssues: h.issues.length,
  }));
  h.finish(0);
}

h.run(main);
