// Connects the published `hyperstack-typescript@0.6.9` client to a host that
// requires subscriber tokens, with one of the client's auth strategies, and
// checks that it streams; with `getToken` (tokens of 62 s, so the client's
// 60 s refresh margin schedules an in-band `refresh_auth` about 2 s in), it
// also checks that streaming continues after the refresh.
//
// Protocol with the driving Rust test:
//   1. Connect with VISTA_AUTH_STRATEGY = static | getToken, subscribe to
//      Token/list, wait for the snapshot (holding `a`); with getToken, also
//      wait until the client asked for a second token and sent it; print
//      `ready`.
//   2. Read one line from stdin (the test then has ingested token `b`), wait
//      until the store holds `b`, print {"ok":true,...} and exit 0.
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL, VISTA_JWT_SECRET (HS256),
// VISTA_JWT_AUDIENCE, VISTA_AUTH_STRATEGY (static | getToken | endpoint),
// VISTA_PUBLISHABLE_KEY (endpoint), VISTA_TIMEOUT_MS.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { harness, checkHealthy, readOneLine, writeStdout } from './lib.mjs';

const NAME = 'auth.mjs';
const h = harness(NAME);
const SECRET = process.env.VISTA_JWT_SECRET;
const AUDIENCE = process.env.VISTA_JWT_AUDIENCE;
const STRATEGY = process.env.VISTA_AUTH_STRATEGY ?? 'static';
const VIEW = 'Token/list';
const STACK = { name: 'tokens', url: h.WS_URL, views: { Token: { list: { mode: 'list', view: VIEW } } } };

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** An HS256 JWT valid for `ttl` seconds. */
function mint(ttl) {
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: 'ts-client', aud: AUDIENCE, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  const signature = crypto.createHmac('sha256', SECRET).update(body).digest('base64url');
  return `${body}.${signature}`;
}

let tokensHandedOut = 0;
const auth = {
  static: () => ({ token: mint(3600) }),
  getToken: () => ({ getToken: async () => { tokensHandedOut += 1; return mint(62); } }),
  // The host's own token endpoint, as a browser app would use it.
  endpoint: () => ({ publishableKey: process.env.VISTA_PUBLISHABLE_KEY, tokenEndpoint: `${h.HTTP_URL}/auth/token` }),
}[STRATEGY]();

async function main() {
  const hs = await h.connect(STACK, auth);
  let snapshotComplete = false;
  const refreshes = [];
  hs.onFrame((frame) => {
    if (frame.entity === VIEW && frame.op === 'snapshot' && frame.complete) snapshotComplete = true;
  });
  const updates = [];
  h.pump(hs.views.Token.list.watch(), updates);
  await h.waitFor(`snapshot of ${VIEW} holding a`, () => {
    checkHealthy(h);
    assert.ok(snapshotComplete);
    assert.ok(hs.store.get(VIEW, 'a'), 'token a in the store');
  });
  if (STRATEGY === 'getToken') {
    await h.waitFor('a second token, sent in-band', () => {
      checkHealthy(h);
      assert.ok(tokensHandedOut >= 2, `getToken called ${tokensHandedOut} time(s)`);
    });
  }
  await writeStdout('ready\n');
  await readOneLine(h, 60_000);
  await h.waitFor('token b after the refresh', () => {
    checkHealthy(h);
    assert.ok(hs.store.get(VIEW, 'b'), 'token b in the store');
  });
  await writeStdout(JSON.stringify({ ok: true, strategy: STRATEGY, tokens: tokensHandedOut, states: h.states }) + '\n');
  h.finish(0);
}

main().catch((e) => h.fail(e?.stack ?? String(e)));
