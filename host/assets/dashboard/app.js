// The dashboard page: polls the admin routes once a second (GET /plugins,
// GET /admin/views, GET /admin/figures, GET /admin/dead-letters), draws the
// tables and charts, and
// drives the view inspector. Plain ES modules, no build step: the files in
// host/assets/dashboard are what the browser runs.

import { Api, AuthRequired, initialToken } from './api.js';
import { Sparkline, bytesRate, compact } from './charts.js';
import { Inspector } from './inspector.js';

const POLL_MS = 1000;
const HISTORY_SHOWN = 6;
const DEAD_LETTERS_SHOWN = 50;

const $ = (selector) => document.querySelector(selector);

// `#view=Token/list&key=...&skip=...&take=...` (or the same as a query)
// opens the inspector on load, so an inspection can be bookmarked.
const linked = (() => {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [name, value] of new URLSearchParams(location.search)) {
    if (!params.has(name)) params.set(name, value);
  }
  return params;
})();
let pendingView = linked.get('view');

const api = new Api(initialToken());
$('#token').value = api.token;
$('#host-name').textContent = location.host;

const inspector = new Inspector({
  api,
  rowsElement: $('#rows'),
  rawElement: $('#raw'),
  statusElement: $('#inspect-status'),
});

// Live figures: rates from successive totals.
const figures = $('#figures');
const perSecond = (v) => `${compact(v)}/s`;
const charts = {
  connections: new Sparkline(figures, 'connections', 'connections', compact),
  events: new Sparkline(figures, 'events', 'events', perSecond),
  frames: new Sparkline(figures, 'frames', 'frames sent', perSecond),
  bytes: new Sparkline(figures, 'bytes', 'bytes sent', bytesRate),
  conflated: new Sparkline(figures, 'conflated', 'conflated frames', perSecond),
  slowConsumerCloses: new Sparkline(figures, 'slowConsumerCloses', 'slow-consumer closes', perSecond),
};
let previous = null;

function drawFigures(sample) {
  charts.connections.push(sample.connections);
  if (previous && sample.at > previous.at) {
    const seconds = (sample.at - previous.at) / 1000;
    for (const name of ['events', 'frames', 'bytes', 'conflated', 'slowConsumerCloses']) {
      charts[name].push(Math.max(0, sample[name] - previous[name]) / seconds);
      charts[name].root.title = `total ${sample[name]}`;
      charts[name].root.dataset.total = String(sample[name]);
    }
  }
  previous = sample;
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text ?? '';
  if (className) td.className = className;
  row.append(td);
  return td;
}

const time = (ms) => (ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : '');

function drawPlugins(plugins) {
  const rows = plugins.map((p) => {
    const row = document.createElement('tr');
    row.dataset.plugin = p.name ?? '';
    row.dataset.file = p.file;
    row.dataset.build = p.fingerprint ?? '';
    row.dataset.state = p.state;
    cell(row, p.name ?? '(unreadable)');
    cell(row, p.version);
    cell(row, p.fingerprint, 'mono build');
    const state = cell(row, p.state, `state-${p.state}`);
    if (p.reprojection) state.textContent += ` · reprojection ${p.reprojection.state}`;
    cell(row, time(p.loaded_at));
    cell(row, p.last_error, 'error');
    const history = cell(row, '', 'history-cell');
    history.dataset.count = String(p.history?.length ?? 0);
    const list = document.createElement('ol');
    list.className = 'history';
    for (const h of (p.history ?? []).slice(-HISTORY_SHOWN).reverse()) {
      const item = document.createElement('li');
      item.className = h.event;
      item.dataset.build = h.fingerprint ?? '';
      item.textContent = `${time(h.at)} ${h.event}${h.version ? ` ${h.version}` : ''}${h.from ? ` ${h.from} →` : ''}${h.fingerprint ? ` ${h.fingerprint}` : ''}${
        h.error ? `: ${h.error}` : ''
      }`;
      list.append(item);
    }
    history.append(list);
    cell(row, p.file.split('/').pop(), 'mono').title = p.file;
    return row;
  });
  $('#plugins tbody').replaceChildren(...rows);
}

function drawDeadLetters(letters) {
  const newest = letters.slice().sort((a, b) => b.at_ms - a.at_ms).slice(0, DEAD_LETTERS_SHOWN);
  const rows = newest.map((d) => {
    const row = document.createElement('tr');
    row.dataset.plugin = d.plugin;
    row.dataset.code = d.code;
    cell(row, time(d.at_ms));
    cell(row, d.plugin);
    cell(row, d.fingerprint.slice(0, 8), 'mono').title = d.fingerprint;
    cell(row, d.position == null ? d.stream : `${d.stream} @${d.position}`, 'mono');
    cell(row, String(d.line));
    cell(row, d.code, 'mono');
    cell(row, d.signal ?? '');
    cell(row, d.error, 'error');
    cell(row, JSON.stringify(d.event), 'mono');
    return row;
  });
  $('#dead-letters tbody').replaceChildren(...rows);
}

function definition(v) {
  const parts = [];
  if (v.filter) parts.push(`filter ${JSON.stringify(v.filter)}`);
  if (v.sort) parts.push(`sort ${v.sort.field} ${v.sort.order}`);
  if (v.take !== undefined) parts.push(`take ${v.take}`);
  if (!v.derived) parts.push('(base view)');
  return parts.join(' · ');
}

function drawViews(views) {
  const rows = views.map((v) => {
    const row = document.createElement('tr');
    row.dataset.view = v.id;
    cell(row, v.id, 'mono');
    cell(row, v.plugin);
    cell(row, v.mode);
    cell(row, definition(v), 'mono');
    cell(row, String(v.entities));
    cell(row, String(v.subscribers), 'subscribers');
    row.addEventListener('click', () => {
      $('#inspect-view').value = v.id;
      openInspector();
    });
    return row;
  });
  $('#views tbody').replaceChildren(...rows);
  // The inspector's choices follow the views, keeping the selection.
  const select = $('#inspect-view');
  const ids = views.map((v) => v.id);
  if (ids.join() !== [...select.options].map((o) => o.value).join()) {
    const chosen = select.value;
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(chosen)) select.value = chosen;
  }
  if (pendingView && ids.includes(pendingView)) {
    select.value = pendingView;
    $('#inspect-key').value = linked.get('key') ?? '';
    $('#inspect-skip').value = linked.get('skip') ?? '';
    $('#inspect-take').value = linked.get('take') ?? '';
    pendingView = null;
    openInspector();
  }
}

function pollState(state, text) {
  const el = $('#poll-state');
  el.dataset.state = state;
  el.textContent = text;
  $('#auth-banner').hidden = state !== 'auth';
}

async function poll() {
  try {
    const [plugins, views, sample, dead] = await Promise.all([
      api.get('/plugins'),
      api.get('/admin/views'),
      api.get('/admin/figures'),
      api.get('/admin/dead-letters'),
    ]);
    drawPlugins(plugins);
    drawViews(views);
    drawDeadLetters(dead.dead_letters);
    drawFigures(sample);
    pollState('ok', `updated ${time(Date.now())}`);
  } catch (err) {
    if (err instanceof AuthRequired) pollState('auth', 'admin token needed');
    else pollState('error', err.message);
  }
}

function number(input) {
  const value = input.value.trim();
  if (value === '') return undefined;
  const parsed = Number(value);
  return Number.isInteger(parsed) && parsed >= 0 ? parsed : NaN;
}

function openInspector() {
  const view = $('#inspect-view').value;
  const take = number($('#inspect-take'));
  const skip = number($('#inspect-skip'));
  if (!view) return;
  if (Number.isNaN(take) || Number.isNaN(skip)) {
    $('#inspect-status').textContent = 'take and skip must be whole numbers ≥ 0';
    $('#inspect-status').dataset.state = 'error';
    return;
  }
  const key = $('#inspect-key').value.trim() || undefined;
  inspector.open({ view, key, take, skip });
}

$('#inspect-form').addEventListener('submit', (event) => {
  event.preventDefault();
  openInspector();
});
$('#inspect-stop').addEventListener('click', () => inspector.close());
$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  api.setToken($('#token').value.trim());
  inspector.restart();
  poll();
});

// One poll at a time: a slow answer delays the next instead of piling up.
// A hidden tab does not poll (the inspector's socket stays subscribed).
(async function loop() {
  if (!document.hidden) await poll();
  setTimeout(loop, POLL_MS);
})();
