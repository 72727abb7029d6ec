// The live view inspector: one WebSocket speaking the same protocol as any
// client (docs/PROTOCOL.md): subscribe, then `subscribed`, snapshot
// batches and live `upsert`/`patch`/`delete` frames, some of them gzipped
// binary messages (first bytes 1f 8b), decoded with the browser's
// DecompressionStream. Decoding is asynchronous, so messages go through
// one promise chain: they are applied strictly in arrival order.
//
// Rows are kept in a Map by key plus an array in view order (the sort of
// the `subscribed` frame, ordered as the host orders: missing lowest, then
// booleans, numbers, strings; ties by key). A change moves one row by
// binary search, so 100k rows cost O(log n) to find and a memmove to
// shift, never a full sort; the table redraws once per animation frame.

import { VirtualTable } from './table.js';

const FRESH_MS = 1500;
const RAW_SECONDS = 10;
const RAW_MAX = 400;
const RAW_TEXT = 600;
const MAX_FIELDS = 8;

/** The value at a dot path (as an array of segments) of an entity. */
function lookup(entity, path) {
  let value = entity;
  for (const segment of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = value[segment];
  }
  return value;
}

function rank(value) {
  switch (typeof value) {
    case 'boolean':
      return 1;
    case 'number':
      return 2;
    case 'string':
      return 3;
    default:
      return 0; // missing, null, object, array
  }
}

function compareValues(a, b) {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  if (ra === 0) return 0;
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareKeys(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Deep merge of a patch; arrays at `append` paths are concatenated. */
function mergePatch(target, patch, append, prefix = '') {
  for (const [field, value] of Object.entries(patch)) {
    const path = prefix ? `${prefix}.${field}` : field;
    const current = target[field];
    if (append.includes(path) && Array.isArray(value)) {
      target[field] = Array.isArray(current) ? current.concat(value) : value;
    } else if (value && typeof value === 'object' && !Array.isArray(value)) {
      target[field] = current && typeof current === 'object' && !Array.isArray(current) ? current : {};
      mergePatch(target[field], value, append, path);
    } else {
      target[field] = value;
    }
  }
  return target;
}

async function gunzip(buffer) {
  const stream = new Blob([buffer]).stream().pipeThrough(new DecompressionStream('gzip'));
  return new Response(stream).text();
}

function cellText(value) {
  if (value === undefined) return '';
  if (typeof value === 'string') return value;
  return JSON.stringify(value);
}

export class Inspector {
  /**
   * @param {object} parts the elements: rows, raw, status; and api (socket URL)
   */
  constructor({ api, rowsElement, rawElement, statusElement }) {
    this.api = api;
    this.rawElement = rawElement;
    this.statusElement = statusElement;
    this.socket = null;
    this.request = null; // what we are subscribed to
    this.awaitingSubscribed = false;
    this.sort = null; // {field: [..], order}
    this.rows = new Map(); // key -> {key, data, sortValue, updated}
    this.order = []; // entries in view order
    this.fields = [];
    this.frames = 0;
    this.raw = [];
    this.rawDirty = false;
    this.issue = null;
    this.chain = Promise.resolve();
    this.table = new VirtualTable(rowsElement, {
      count: () => this.order.length,
      columns: () => ['key', '_seq', ...this.fields],
      row: (i) => {
        const entry = this.order[i];
        return {
          key: entry.key,
          fresh: performance.now() - entry.updated < FRESH_MS,
          cells: [entry.key, cellText(entry.data?._seq), ...this.fields.map((f) => cellText(entry.data?.[f]))],
        };
      },
    });
    // Fresh-row highlights fade and raw frames age out without new frames.
    setInterval(() => {
      this.table.invalidate();
      this.rawDirty = true;
      this.renderRaw();
    }, 500);
  }

  /** Subscribes to `request` ({view, key, take, skip}), replacing the current subscription. */
  open(request) {
    this.close();
    this.request = request;
    this.awaitingSubscribed = true;
    this.issue = null;
    this.ensureSocket();
    this.sendSubscribe();
    this.status('subscribing');
  }

  /** Ends the subscription (the socket stays open for the next one). */
  close() {
    if (this.request && this.socket?.readyState === WebSocket.OPEN) {
      const { view, key } = this.request;
      this.socket.send(JSON.stringify({ type: 'unsubscribe', view, ...(key ? { key } : {}) }));
    }
    this.request = null;
    this.reset();
    this.status('idle');
  }

  /** Reconnects with a new token. */
  restart() {
    const request = this.request;
    this.socket?.close();
    this.socket = null;
    if (request) this.open(request);
  }

  reset() {
    this.rows.clear();
    this.order = [];
    this.fields = [];
    this.sort = null;
    this.frames = 0;
    this.table.invalidate();
  }

  ensureSocket() {
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) return;
    const socket = new WebSocket(this.api.socketUrl());
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    socket.onopen = () => this.sendSubscribe();
    socket.onmessage = (event) => {
      const arrived = Date.now();
      this.chain = this.chain
        .then(() => this.decode(event.data))
        .then((decoded) => this.handle(decoded, arrived))
        .catch((err) => this.status('error', `bad frame: ${err.message}`));
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.status('disconnected', `socket closed ${event.code} ${event.reason}`);
      // Resubscribe after a pause, like the published clients.
      if (this.request) {
        setTimeout(() => {
          if (this.request && !this.socket) {
            this.awaitingSubscribed = true;
            this.ensureSocket();
          }
        }, 1000);
      }
    };
  }

  sendSubscribe() {
    if (!this.request || this.socket?.readyState !== WebSocket.OPEN) return;
    const { view, key, take, skip } = this.request;
    const message = { type: 'subscribe', view };
    if (key) message.key = key;
    if (Number.isInteger(take)) message.take = take;
    if (Number.isInteger(skip)) message.skip = skip;
    this.awaitingSubscribed = true;
    this.socket.send(JSON.stringify(message));
  }

  async decode(data) {
    if (typeof data === 'string') return { text: data, size: data.length, gzipped: false, binary: false };
    const bytes = new Uint8Array(data);
    const gzipped = bytes[0] === 0x1f && bytes[1] === 0x8b;
    const text = gzipped ? await gunzip(data) : new TextDecoder().decode(bytes);
    return { text, size: bytes.length, gzipped, binary: true };
  }

  handle({ text, size, gzipped, binary }, arrived) {
    const frame = JSON.parse(text);
    this.recordRaw(frame, text, size, gzipped, binary, arrived);
    const request = this.request;
    if (!request) return;
    if (frame.type === 'error') {
      this.issue = `${frame.error}: ${frame.message}`;
      this.status(this.awaitingSubscribed ? 'issue' : 'live');
      return;
    }
    if (frame.op === 'subscribed') {
      if (frame.view !== request.view) return;
      if (this.awaitingSubscribed) {
        // A fresh subscription: what came before belongs to the old one.
        this.awaitingSubscribed = false;
        this.reset();
      }
      this.sort = frame.sort ?? null;
      this.resort();
      this.status('live');
      return;
    }
    if (this.awaitingSubscribed || frame.entity !== request.view) return;
    this.frames += 1;
    switch (frame.op) {
      case 'snapshot':
        for (const { key, data } of frame.data) this.put(key, data);
        break;
      case 'upsert':
        this.put(frame.key, frame.data);
        break;
      case 'patch': {
        // Entries own their data: merged in place.
        const current = this.rows.get(frame.key)?.data ?? {};
        this.put(frame.key, mergePatch(current, frame.data ?? {}, frame.append ?? []));
        break;
      }
      case 'delete':
        this.remove(frame.key);
        break;
      default:
        return;
    }
    this.table.invalidate();
    this.status('live');
  }

  compare(a, b) {
    if (this.sort) {
      const byValue = compareValues(a.sortValue, b.sortValue);
      if (byValue !== 0) return this.sort.order === 'desc' ? -byValue : byValue;
    }
    return compareKeys(a.key, b.key);
  }

  /** Where `entry` is, or would go, in `order` (binary search). */
  position(entry) {
    let low = 0;
    let high = this.order.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.compare(this.order[mid], entry) < 0) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  sortValueOf(data) {
    return this.sort ? lookup(data, this.sort.field) : undefined;
  }

  put(key, data) {
    const sortValue = this.sortValueOf(data);
    let entry = this.rows.get(key);
    if (entry) {
      if (compareValues(entry.sortValue, sortValue) !== 0) {
        this.order.splice(this.position(entry), 1);
        entry.sortValue = sortValue;
        this.order.splice(this.position(entry), 0, entry);
      }
      entry.data = data;
    } else {
      entry = { key, data, sortValue };
      this.rows.set(key, entry);
      this.order.splice(this.position(entry), 0, entry);
    }
    entry.updated = performance.now();
    this.learnFields(data);
  }

  remove(key) {
    const entry = this.rows.get(key);
    if (!entry) return;
    this.order.splice(this.position(entry), 1);
    this.rows.delete(key);
  }

  resort() {
    for (const entry of this.order) entry.sortValue = this.sortValueOf(entry.data);
    this.order.sort((a, b) => this.compare(a, b));
    this.table.invalidate();
  }

  /** Columns: the first MAX_FIELDS top-level fields seen (besides _seq). */
  learnFields(data) {
    if (this.fields.length >= MAX_FIELDS || !data || typeof data !== 'object') return;
    for (const field of Object.keys(data)) {
      if (field === '_seq' || this.fields.includes(field)) continue;
      this.fields.push(field);
      if (this.fields.length >= MAX_FIELDS) break;
    }
  }

  recordRaw(frame, text, size, gzipped, binary, arrived) {
    this.raw.push({
      at: arrived,
      size,
      gzipped,
      binary,
      summary: frame.op
        ? `${frame.op} ${frame.entity ?? frame.view ?? ''}${frame.key !== undefined ? ` ${frame.key}` : ''}${
            frame.op === 'snapshot' ? ` (${frame.data.length}${frame.complete ? ', complete' : ''})` : ''
          }`
        : `${frame.type ?? 'text'} ${frame.error ?? ''}`,
      text: text.length > RAW_TEXT ? `${text.slice(0, RAW_TEXT)}…` : text,
    });
    if (this.raw.length > RAW_MAX) this.raw.splice(0, this.raw.length - RAW_MAX);
    this.rawDirty = true;
  }

  /** The frames of the last RAW_SECONDS, newest first (at most 4 redraws a second). */
  renderRaw() {
    if (!this.rawDirty) return;
    this.rawDirty = false;
    const since = Date.now() - RAW_SECONDS * 1000;
    while (this.raw.length && this.raw[0].at < since) this.raw.shift();
    const items = this.raw
      .slice(-60)
      .reverse()
      .map((f) => {
        const item = document.createElement('li');
        const head = document.createElement('div');
        head.className = 'raw-head';
        const time = new Date(f.at).toISOString().slice(11, 23);
        const kind = `${f.binary ? 'binary' : 'text'}${f.gzipped ? ' gzip' : ''}`;
        head.textContent = `${time}  ${f.summary}  ·  ${f.size} B ${kind}`;
        const body = document.createElement('code');
        body.textContent = f.text;
        item.append(head, body);
        return item;
      });
    this.rawElement.replaceChildren(...items);
  }

  /** Records the state; the status line is painted at most once per frame. */
  status(state, detail = '') {
    this.state = state;
    this.detail = detail;
    if (this.statusScheduled) return;
    this.statusScheduled = true;
    requestAnimationFrame(() => {
      this.statusScheduled = false;
      this.paintStatus();
    });
  }

  paintStatus() {
    const { state, detail } = this;
    const el = this.statusElement;
    el.dataset.state = state;
    el.dataset.rows = String(this.order.length);
    const parts = [];
    if (this.request) {
      const { view, key, take, skip } = this.request;
      parts.push(`${view}${key ? ` key ${key}` : ''}${take !== undefined ? ` take ${take}` : ''}${skip !== undefined ? ` skip ${skip}` : ''}`);
    }
    parts.push(state);
    if (this.request) parts.push(`${this.order.length} rows`, `${this.frames} frames`);
    if (this.issue) parts.push(this.issue);
    if (detail) parts.push(detail);
    el.textContent = parts.join(' · ');
  }
}
