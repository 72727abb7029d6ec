// Shared harness for the scripts in this directory, which drive the published
// `hyperstack-typescript@0.6.9` client against a running Vista host.
//
// Usage:
//   const h = harness('games.mjs');        // reads VISTA_* env, exits 2 if unset
//   const hs = await h.connect(STACK);     // published client over `ws`
//   h.pump(hs.views.X.y.watch(), updates); // starts the subscription
//   await h.ingest('games', [...events]);  // POST /ingest/games (NDJSON)
//   await h.waitFor('label', () => { assert...; });
//   h.finish(0);                           // or h.run(main) to map throws to fail()
//
// Environment: VISTA_WS_URL, VISTA_HTTP_URL (required), VISTA_TIMEOUT_MS
// (per waitFor, default 10000), VISTA_DEBUG=1 (print every parsed frame to
// stderr).

import readline from 'node:readline';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { HyperStack } from 'hyperstack-typescript';

// Under Node 20 the client reads `WebSocket.OPEN` etc. from the global even
// when a websocketFactory is given.
globalThis.WebSocket = WebSocket;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The entity as the client stores it, minus the server's `_seq`. */
export function withoutSeq(entity) {
  if (entity === null || typeof entity !== 'object') return entity;
  const { _seq, ...rest } = entity;
  return rest;
}

/** Every view id (`Token/list`, ...) declared in a stack definition. */
/** The stack for the `games` plugin's derived view `ActiveGame/latest`. */
export function activeGamesStack(url) {
  return {
    name: 'vista-games',
    url,
    views: { ActiveGame: { latest: { mode: 'list', view: 'ActiveGame/latest' } } },
  };
}

export function stackViews(stack) {
  return Object.values(stack.views).flatMap((group) => Object.values(group).map((def) => def.view));
}

/**
 * Creates the harness for one script. `name` prefixes error messages. Reads
 * the environment now and exits with code 2 when the URLs are missing.
 */
export function harness(name) {
  const WS_URL = process.env.VISTA_WS_URL;
  const HTTP_URL = (process.env.VISTA_HTTP_URL ?? '').replace(/\/+$/, '');
  const TIMEOUT_MS = Number(process.env.VISTA_TIMEOUT_MS ?? 10_000);
  if (!WS_URL || !HTTP_URL) {
    console.error(`${name}: set VISTA_WS_URL (ws://host:port) and VISTA_HTTP_URL (http://host:port)`);
    process.exit(2);
  }

  let hs = null;
  let dumpViews = [];
  let fatal = null; // set by connection/socket-issue handlers; checked while polling
  const issues = []; // socket issues the server reported
  const states = []; // every connection state change: {state, error?}
  const subscribed = new Map(); // view -> first `subscribed` frame (as parsed by the client)

  function fail(message) {
    console.error(`${name}: FAIL: ${message}`);
    finish(1);
  }

  function finish(code) {
    process.exitCode = code;
    try { hs?.disconnect(); } catch { /* ignore */ }
    // Let the close handshake happen, but never hang on it.
    setTimeout(() => process.exit(code), 1000).unref();
  }

  /** POSTs `events` as NDJSON to /ingest/<stream>; checks the acknowledgement. */
  async function ingest(stream, events) {
    const path = `/ingest/${stream}`;
    const body = events.map((e) => JSON.stringify(e)).join('\n') + '\n';
    let res;
    try {
      res = await fetch(`${HTTP_URL}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-ndjson' },
        body,
      });
    } catch (e) {
      throw new Error(`POST ${path} failed: ${e.cause?.message ?? e.message}`);
    }
    const text = await res.text();
    if (res.status !== 200) {
      throw new Error(`POST ${path} -> HTTP ${res.status}: ${text.slice(0, 300)}`);
    }
    let json;
    try { json = JSON.parse(text); } catch {
      throw new Error(`POST ${path} -> non-JSON body: ${text.slice(0, 300)}`);
    }
    assert.equal(json.accepted, events.length, `ingest accepted count (body ${text})`);
    assert.equal(typeof json.seq, 'string', `ingest seq must be a string (body ${text})`);
    return json;
  }

  function dumpStore() {
    if (!hs) return '(not connected)';
    const out = {};
    for (const view of dumpViews) {
      out[view] = Object.fromEntries(hs.store.keys(view).map((k) => [k, hs.store.get(view, k)]));
    }
    return JSON.stringify(out);
  }

  /** Polls `check` (throws while not yet satisfied) until it passes or the deadline. */
  async function waitFor(label, check, timeoutMs = TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    let lastErr;
    for (;;) {
      if (fatal) throw new Error(`${label}: ${fatal}`);
      try {
        return check();
      } catch (e) {
        lastErr = e;
      }
      if (Date.now() > deadline) {
        throw new Error(`timeout after ${timeoutMs} ms waiting for ${label}: ${lastErr?.message ?? lastErr}\n`
          + `client store now: ${dumpStore()}`);
      }
      await sleep(25);
    }
  }

  /** Starts an update stream (this is what sends the subscribe) and records updates. */
  function pump(iterable, sink) {
    const it = iterable[Symbol.asyncIterator]();
    (async () => {
      for (;;) {
        const { value, done } = await it.next();
        if (done) return;
        sink.push(value);
      }
    })().catch((e) => { fatal = `update stream failed: ${e.message}`; });
    return it;
  }

  /**
   * Connects the published client to VISTA_WS_URL with `stack`, never
   * reconnecting; any error/reconnecting state or socket issue makes the
   * next waitFor fail. Records `subscribed` frames in `h.subscribed` and
   * every connection state change (from the first `connecting` on, since the
   * handlers are registered before the socket opens) in `h.states`.
   */
  /** Connects; `auth` adds to the client's auth options (token, getToken, ...). */
  async function connect(stack, auth = {}) {
    dumpViews = stackViews(stack);
    hs = await HyperStack.connect(stack, {
      url: WS_URL,
      autoReconnect: false, // only defers the first connect (below, after the handlers)
      maxReconnectAttempts: 0,
      auth: {
        ...auth,
        websocketFactory: (url, init) => {
          const ws = new WebSocket(url, init);
          ws.binaryType = 'arraybuffer'; // otherwise the client rejects binary frames
          return ws;
        },
      },
    });
    hs.onConnectionStateChange((state, error) => {
      states.push(error ? { state, error: String(error) } : { state });
      // `disconnected` only comes from finish() (hs.disconnect()), after the last waitFor.
      if (state === 'error' || state === 'reconnecting' || state === 'disconnected') {
        fatal = `client connection state '${state}'${error ? `: ${error}` : ''}`;
      }
    });
    hs.onSocketIssue((issue) => {
      issues.push(issue);
      fatal = `server reported socket issue ${JSON.stringify(issue)}`;
    });
    hs.onFrame((frame) => {
      if (process.env.VISTA_DEBUG) console.error('frame', JSON.stringify(frame));
      if (frame.op === 'subscribed' && !subscribed.has(frame.view)) subscribed.set(frame.view, frame);
    });
    await hs.connect();
    return hs;
  }

  /** Runs the script body; any throw becomes a FAIL with exit code 1. */
  function run(main) {
    main().catch((e) => fail(e.message));
  }

  return {
    WS_URL, HTTP_URL, TIMEOUT_MS,
    get hs() { return hs; },
    /** Why the next waitFor will fail (connection state, socket issue), or null. */
    get fatal() { return fatal; },
    issues, subscribed, states,
    connect, ingest, waitFor, pump, dumpStore, fail, finish, run,
  };
}

/** Throws on a bad connection state or a socket issue seen by harness `h`. */
export function checkHealthy(h) {
  if (h.fatal) throw new Error(`reconnected or broken connection: ${h.fatal}; states ${JSON.stringify(h.states)}`);
  if (h.issues.length) throw new Error(`unexpected socket issue(s): ${JSON.stringify(h.issues)}`);
}

/** Reads one line from stdin, failing on EOF, timeout or an unhealthy connection meanwhile. */
export async function readOneLine(h, timeoutMs) {
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  let line = null;
  let closed = false;
  rl.once('line', (l) => { line = l; rl.close(); });
  rl.once('close', () => { closed = true; });
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      if (line !== null) return line;
      checkHealthy(h);
      if (closed) throw new Error('stdin closed before the expected line');
      if (Date.now() > deadline) throw new Error(`no line on stdin within ${timeoutMs} ms`);
      await sleep(10);
    }
  } finally {
    rl.close();
    process.stdin.destroy(); // do not keep the process alive
  }
}

/** Writes to stdout and waits until it is flushed. */
export function writeStdout(text) {
  return new Promise((resolve, reject) => process.stdout.write(text, (e) => (e ? reject(e) : resolve())));
}
