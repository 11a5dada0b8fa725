// skyfri dashboard: plain JavaScript, no dependencies. Every value from the gateway is put
// on the page as text (textContent), never as HTML. The session lives in an HttpOnly
// cookie the script cannot read; the CSRF token it sends with each call is kept in memory
// only (read again from /ui/session after a reload).
'use strict';

const REFRESH_MS = 10000;
const MAX_LOG_LINES = 2000;
let session = null;
let cleanups = [];

const $ = (sel, el = document) => el.querySelector(sel);

// Builds an element: h('td', {class: 'num'}, 'text', childNode, ...).
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function status(message) { $('#status').textContent = message || ''; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function errorOf(r) {
  let message = r.status + ' ' + r.statusText;
  try {
    const body = await r.json();
    if (body && body.error) message = body.error;
  } catch (_) { /* not JSON */ }
  return new ApiError(r.status, message);
}

// A call of the gateway's /system API through the session.
async function call(path, opts = {}) {
  const headers = Object.assign({ 'X-Skyfri-Csrf': session ? session.csrf : '' }, opts.headers || {});
  const r = await fetch(path, Object.assign({}, opts, { headers, credentials: 'same-origin' }));
  if (r.status === 401) { showLogin('Your session has ended: log in again.'); throw new ApiError(401, 'not logged in'); }
  if (!r.ok) throw await errorOf(r);
  return r;
}
const api = (path, opts) => call('/ui/api/system' + path, opts);
const apiJson = async (path, opts) => (await api(path, opts)).json();

// ---- formatting ----
const fmtInt = n => (n === null || n === undefined) ? '–' : Math.round(n).toLocaleString('en-US');
function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms === 0) return '0';
  if (ms < 1) return (ms * 1000).toFixed(0) + ' µs';
  if (ms < 1000) return (ms < 10 ? ms.toFixed(1) : ms.toFixed(0)) + ' ms';
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
}
const fmtPct = p => (p === null || p === undefined) ? '–' : (p < 10 ? p.toFixed(1) : p.toFixed(0)) + ' %';
// Cents, or the first significant digits of an amount under a cent.
const fmtUsd = u => '$' + (u || 0).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: u > 0 && u < 0.01 ? 6 : 2 });
const fmtTime = t => t ? new Date(t).toLocaleString() : '–';
const hhmm = unix => new Date(unix * 1000).toTimeString().slice(0, 5);
const sum = a => a.reduce((x, y) => x + (y || 0), 0);
const errorRate = (errors, calls) => errors.map((e, i) => calls[i] ? 100 * e / calls[i] : null);
function hourlyErrorPct(f) { return f.total.calls ? 100 * f.total.errors / f.total.calls : null; }

// ---- charts (inline SVG) ----
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// Draws `values` (nulls break the line) on `svg`; a point alone between gaps is a dot.
function plot(svg, values, x, y, color, width) {
  let d = '';
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    const before = i > 0 && values[i - 1] !== null && values[i - 1] !== undefined;
    const after = i < values.length - 1 && values[i + 1] !== null && values[i + 1] !== undefined;
    if (!before && !after) {
      svg.append(s('circle', { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: width * 1.2, fill: color }));
      return;
    }
    d += (before ? 'L' : 'M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1);
  });
  if (d) svg.append(s('path', { d, fill: 'none', stroke: color, 'stroke-width': width, 'vector-effect': 'non-scaling-stroke' }));
}

// A line chart of per-minute series [{label, values, color}] starting at unix `from`.
// Sized for a card of about 380 px, so the text is not stretched much.
function chart(title, from, step, series, fmt, integer) {
  const W = 380, H = 140, L = 40, R = 6, T = 8, B = 18;
  const n = Math.max(...series.map(x => x.values.length), 1);
  let max = niceMax(Math.max(0, ...series.flatMap(x => x.values.filter(v => v !== null))));
  if (integer) max = Math.max(max, 2);
  const x = i => L + (W - L - R) * (n === 1 ? 1 : i / (n - 1));
  const y = v => T + (H - T - B) * (1 - v / max);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  for (const v of [0, max / 2, max]) {
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end' }, fmt(v)));
  }
  for (const [i, label] of [[0, '-' + n + 'm'], [Math.floor((n - 1) / 2), '-' + Math.ceil(n / 2) + 'm'], [n - 1, 'now']]) {
    svg.append(s('text', { x: x(i), y: H - 4, 'text-anchor': i === 0 ? 'start' : i === n - 1 ? 'end' : 'middle' }, label));
  }
  for (const ser of series) plot(svg, ser.values, x, y, ser.color, 1.8);
  const cursor = s('line', { class: 'cursor', y1: T, y2: H - B, x1: -10, x2: -10 });
  svg.append(cursor);
  const legend = h('span');
  const showAt = i => {
    const parts = series.map(ser => ser.label + ' ' + fmt(ser.values[i]));
    legend.textContent = hhmm(from + i * step) + ' · ' + parts.join(' · ');
  };
  const showLatest = () => {
    cursor.setAttribute('x1', -10); cursor.setAttribute('x2', -10);
    legend.textContent = series.map(ser => ser.label + ' ' + fmt(ser.values[n - 1])).join(' · ');
  };
  svg.addEventListener('mousemove', ev => {
    const box = svg.getBoundingClientRect();
    const px = (ev.clientX - box.left) / box.width * W;
    const i = Math.max(0, Math.min(n - 1, Math.round((px - L) / (W - L - R) * (n - 1))));
    cursor.setAttribute('x1', x(i)); cursor.setAttribute('x2', x(i));
    showAt(i);
  });
  svg.addEventListener('mouseleave', showLatest);
  showLatest();
  return h('div', { class: 'card' }, h('h3', {}, title, legend), svg);
}

function spark(values, color) {
  const W = 120, H = 26, n = Math.max(values.length, 1);
  const max = Math.max(0, ...values.filter(v => v !== null)) || 1;
  const svg = s('svg', { class: 'spark', viewBox: `0 0 ${W} ${H}` });
  svg.append(s('line', { x1: 0, x2: W, y1: H - 2, y2: H - 2, stroke: '#e3e6ec' }));
  plot(svg, values, i => 2 + (W - 4) * i / (n - 1 || 1), v => H - 2 - (H - 4) * v / max, color, 1.5);
  return svg;
}

function charts(f, step) {
  const rate = errorRate(f.errors, f.calls);
  return h('div', { class: 'charts' },
    chart('Invocations / min', f.from, step, [{ label: 'calls', values: f.calls, color: '#2563eb' }], fmtInt, true),
    chart('Error rate (5xx)', f.from, step, [{ label: 'errors', values: rate, color: '#dc2626' }], fmtPct),
    chart('Latency', f.from, step, [
      { label: 'p50', values: f.p50Ms, color: '#0891b2' },
      { label: 'p99', values: f.p99Ms, color: '#7c3aed' }], fmtMs),
    chart('Cold starts / min', f.from, step, [{ label: 'cold', values: f.coldStarts, color: '#ca8a04' }], fmtInt, true),
    chart('Replicas ready', f.from, step, [{ label: 'replicas', values: f.replicas, color: '#15803d' }], fmtInt, true));
}

// ---- views ----
function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); status(''); } catch (e) { if (e.status !== 401) status(e.message); }
  };
  const id = setInterval(tick, ms);
  cleanups.push(() => { stopped = true; clearInterval(id); });
  return tick();
}

function replicaBadge(ready, desired) {
  const cls = desired === 0 ? '' : ready >= desired ? 'ok' : ready > 0 ? 'warn' : 'bad';
  return h('span', { class: 'badge ' + cls, title: 'ready / desired' }, ready + ' / ' + desired);
}

async function functionsView(view) {
  view.append(h('h1', {}, 'Functions'));
  const body = h('tbody');
  view.append(h('table', { id: 'functions' },
    h('thead', {}, h('tr', {},
      h('th', {}, 'Name'), h('th', {}, 'Image'), h('th', {}, 'Replicas'),
      h('th', {}, 'Calls / min, last hour'), h('th', { class: 'num' }, 'Calls'),
      h('th', {}, 'Errors'), h('th', { class: 'num' }, 'Error rate'),
      h('th', {}, 'p99'), h('th', { class: 'num' }, 'p50 / p99'), h('th', { class: 'num' }, 'Cold starts'))),
    body));
  await every(REFRESH_MS, async () => {
    const [list, stats] = await Promise.all([apiJson('/functions'), apiJson('/stats')]);
    const byName = new Map(stats.functions.map(f => [f.name, f]));
    list.sort((a, b) => a.name.localeCompare(b.name));
    body.replaceChildren(...list.map(fn => {
      const st = byName.get(fn.name);
      const calls = st ? st.calls : [], rate = st ? errorRate(st.errors, st.calls) : [];
      return h('tr', { 'data-function': fn.name },
        h('td', {}, h('a', { href: '#/fn/' + encodeURIComponent(fn.name) }, fn.name)),
        h('td', { class: 'mono muted' }, fn.image),
        h('td', {}, replicaBadge(fn.availableReplicas, fn.replicas)),
        h('td', {}, spark(calls, '#2563eb')),
        h('td', { class: 'num' }, st ? fmtInt(st.total.calls) : '–'),
        h('td', {}, spark(rate, '#dc2626')),
        h('td', { class: 'num' }, st ? fmtPct(hourlyErrorPct(st)) : '–'),
        h('td', {}, spark(st ? st.p99Ms : [], '#7c3aed')),
        h('td', { class: 'num' }, st ? fmtMs(st.total.p50Ms) + ' / ' + fmtMs(st.total.p99Ms) : '–'),
        h('td', { class: 'num' }, st ? fmtInt(st.total.coldStarts) : '–'));
    }));
    if (!list.length) body.append(h('tr', {}, h('td', { colspan: 10, class: 'muted' }, 'No functions deployed yet: skyfri deploy -f stack.yml')));
  });
}

async function functionView(view, name, tab) {
  const base = '#/fn/' + encodeURIComponent(name);
  const tabs = [['overview', 'Overview'], ['config', 'Configuration'], ['logs', 'Logs'], ['invoke', 'Invoke']];
  view.append(h('h1', {}, h('a', { href: '#/' }, 'Functions'), ' / ', h('span', { id: 'fn-name' }, name)),
    h('nav', { class: 'tabs' }, tabs.map(([id, label]) =>
      h('a', { href: base + '/' + id, class: id === tab ? 'active' : '', 'data-tab': id }, label))));
  const pane = h('div', { id: 'pane-' + tab });
  view.append(pane);
  if (tab === 'config') return configPane(pane, name);
  if (tab === 'logs') return logsPane(pane, name);
  if (tab === 'invoke') return invokePane(pane, name);
  const summary = h('div', { class: 'row' });
  const box = h('div');
  pane.append(summary, box);
  await every(REFRESH_MS, async () => {
    const [fn, stats] = await Promise.all([
      apiJson('/function/' + encodeURIComponent(name)),
      apiJson('/stats?function=' + encodeURIComponent(name))]);
    const f = stats.functions[0];
    summary.replaceChildren(
      h('span', {}, 'Replicas ', replicaBadge(fn.availableReplicas, fn.replicas)),
      h('span', {}, 'In flight ', h('b', {}, fmtInt(fn.inFlight))),
      h('span', {}, 'Waiting ', h('b', {}, fmtInt(fn.queued))),
      h('span', {}, 'Last hour: ', h('b', {}, fmtInt(f.total.calls)), ' calls, ',
        h('b', {}, fmtPct(hourlyErrorPct(f))), ' errors, p50 ', h('b', {}, fmtMs(f.total.p50Ms)),
        ', p99 ', h('b', {}, fmtMs(f.total.p99Ms)), ', ', h('b', {}, fmtInt(f.total.coldStarts)), ' cold starts'),
      fn.lastDecision ? h('span', { class: 'muted' }, 'Autoscaler: ' + fn.lastDecision.reason) : '');
    box.replaceChildren(charts(f, stats.step));
  });
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}
// Passwords in URLs (postgres://user:PASSWORD@host) are masked where they are shown.
const maskUrls = t => String(t).replace(/(\/\/[^\/:@\s"]+:)[^@\s\/"]+@/g, '$1***@');
const mapBlock = m => {
  const entries = Object.entries(m || {});
  return entries.length ? h('pre', {}, maskUrls(entries.map(([k, v]) => k + '=' + v).join('\n'))) : '–';
};

async function configPane(pane, name) {
  const fn = await apiJson('/function/' + encodeURIComponent(name));
  const res = r => r ? Object.entries(r).map(([k, v]) => k + ' ' + v).join(', ') : '–';
  pane.append(kv([
    ['Image', fn.image], ['Namespace', fn.namespace], ['Process', fn.envProcess || '–'],
    ['Replicas', fn.availableReplicas + ' ready of ' + fn.replicas],
    ['Invocations', fmtInt(fn.invocationCount)], ['Created', fmtTime(fn.createdAt)],
    ['Secrets', (fn.secrets || []).join(', ') || '–'],
    ['Limits', res(fn.limits)], ['Requests', res(fn.requests)],
    ['Read-only root', fn.readOnlyRootFilesystem ? 'yes' : 'no'],
    ['Environment', mapBlock(fn.envVars)],
    ['Labels', mapBlock(fn.labels)],
    ['Annotations', mapBlock(fn.annotations)],
  ]), h('details', {}, h('summary', {}, 'As JSON (/system/function/' + name + ')'),
    h('pre', {}, maskUrls(JSON.stringify(fn, null, 2)))));
}

function logLine(l) {
  return h('div', {}, h('span', { class: 't' }, (l.timestamp || '').replace('T', ' ').slice(0, 23) + ' '),
    h('span', { class: 'i' }, (l.instance || '') + ' '), l.text);
}

async function logsPane(pane, name) {
  const live = h('input', { type: 'checkbox', id: 'live-tail' });
  const lines = h('pre', { class: 'log', id: 'logs' });
  pane.append(h('div', { class: 'row' },
    h('label', { class: 'inline' }, live, 'Live tail'),
    h('span', { class: 'muted' }, 'the last 200 lines, then new ones as they are written')), lines);
  let aborter = null;
  const stop = () => { if (aborter) aborter.abort(); aborter = null; };
  cleanups.push(stop);
  const append = text => {
    for (const raw of text.split('\n')) {
      if (!raw.trim()) continue;
      try { lines.append(logLine(JSON.parse(raw))); } catch (_) { lines.append(h('div', {}, raw)); }
    }
    while (lines.childNodes.length > MAX_LOG_LINES) lines.firstChild.remove();
    lines.scrollTop = lines.scrollHeight;
  };
  const load = async follow => {
    stop();
    lines.replaceChildren();
    const q = '/logs?name=' + encodeURIComponent(name) + '&tail=200' + (follow ? '&follow=true' : '');
    if (!follow) { append(await (await api(q)).text()); if (!lines.childNodes.length) lines.append(h('div', { class: 't' }, '(no logs yet)')); return; }
    aborter = new AbortController();
    const r = await api(q, { signal: aborter.signal });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let rest = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        rest += decoder.decode(value, { stream: true });
        const cut = rest.lastIndexOf('\n');
        if (cut >= 0) { append(rest.slice(0, cut)); rest = rest.slice(cut + 1); }
      }
    } catch (e) { if (e.name !== 'AbortError') status('Live tail stopped: ' + e.message); }
  };
  live.addEventListener('change', () => load(live.checked).catch(e => status(e.message)));
  await load(false);
}

async function invokePane(pane, name) {
  const method = h('select', { name: 'method' }, ['POST', 'GET', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'].map(m => h('option', {}, m)));
  const path = h('input', { name: 'path', value: '/', class: 'grow' });
  const headers = h('textarea', { name: 'headers', rows: 3, placeholder: 'Content-Type: application/json' }, 'Content-Type: text/plain');
  const body = h('textarea', { name: 'body', rows: 8, placeholder: 'request body' });
  const result = h('div', { id: 'invoke-result' });
  const send = h('button', { type: 'submit', id: 'invoke-send' }, 'Send');
  const form = h('form', { id: 'invoke-form' },
    h('div', { class: 'row' }, method, h('code', {}, '/function/' + name), path, send),
    h('label', {}, 'Headers (one "Name: value" a line)', headers),
    h('label', {}, 'Body', body));
  pane.append(h('div', { class: 'grid2' }, form, result));
  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    send.disabled = true;
    result.replaceChildren(h('p', { class: 'muted' }, 'Calling…'));
    const hs = headers.value.split('\n').map(l => l.trim()).filter(Boolean).map(l => {
      const i = l.indexOf(':');
      return i < 0 ? [l, ''] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
    });
    try {
      const r = await call('/ui/api/invoke/' + encodeURIComponent(name), {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ method: method.value, path: path.value, headers: hs, body: body.value }),
      });
      const a = await r.json();
      const cls = a.status < 300 ? 'ok' : a.status < 500 ? 'warn' : 'bad';
      result.replaceChildren(
        h('div', { class: 'row' }, h('span', { class: 'badge ' + cls, id: 'invoke-status' }, String(a.status)),
          h('span', {}, h('b', { id: 'invoke-duration' }, fmtMs(a.durationMs))),
          h('span', { class: 'muted' }, fmtInt(a.bytes) + ' bytes' + (a.truncated ? ' (first 1 MiB shown)' : ''))),
        h('h2', {}, 'Headers'),
        h('table', {}, h('tbody', {}, a.headers.map(([k, v]) => h('tr', {}, h('td', { class: 'mono' }, k), h('td', { class: 'mono' }, v))))),
        h('h2', {}, 'Body'), h('pre', { id: 'invoke-body' }, a.body));
    } catch (e) {
      result.replaceChildren(h('p', { class: 'error' }, e.message));
    } finally { send.disabled = false; }
  });
}

async function asyncView(view, params) {
  view.append(h('h1', {}, 'Async calls'));
  const fnSel = h('select', { id: 'async-function' }, h('option', { value: '' }, 'all functions'));
  const stateSel = h('select', { id: 'async-state' }, ['', 'queued', 'running', 'retrying', 'done', 'dead', 'cancelled']
    .map(st => h('option', { value: st }, st || 'any state')));
  stateSel.value = params.get('state') || '';
  const body = h('tbody');
  const detail = h('div');
  view.append(h('div', { class: 'row' }, fnSel, stateSel,
    h('a', { href: '#/async?state=dead' }, 'Dead letters'), h('span', { class: 'muted' }, 'newest first, 200 at most')),
  h('table', {}, h('thead', {}, h('tr', {}, ['Call', 'Function', 'State', 'Attempt', 'Status', 'Enqueued', 'Updated', 'Error', '']
    .map(t => h('th', {}, t)))), body), detail);
  try {
    const fns = await apiJson('/functions');
    fns.map(f => f.name).sort().forEach(n => fnSel.append(h('option', { value: n }, n)));
    fnSel.value = params.get('function') || '';
  } catch (e) { status(e.message); }
  const act = async (what, id) => {
    try {
      await api('/async/calls/' + encodeURIComponent(id) + (what === 'redrive' ? '/redrive' : ''), { method: what === 'redrive' ? 'POST' : 'DELETE' });
      await refresh();
    } catch (e) { status(e.message); }
  };
  const show = async id => {
    try {
      const c = await apiJson('/async/calls/' + encodeURIComponent(id));
      let text = '';
      try { text = new TextDecoder().decode(Uint8Array.from(atob(c.body || ''), ch => ch.charCodeAt(0))); } catch (_) { text = c.body || ''; }
      detail.replaceChildren(h('h2', {}, 'Call ' + id), kv([
        ['Request', c.method + ' ' + c.path + (c.query ? '?' + c.query : '')],
        ['Headers', h('pre', {}, c.headers.map(([k, v]) => k + ': ' + v).join('\n') || '–')],
        ['Body', h('pre', {}, text || '–')],
        ['Callback', c.callbackUrl || '–']]));
    } catch (e) { status(e.message); }
  };
  const refresh = async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (fnSel.value) q.set('function', fnSel.value);
    if (stateSel.value) q.set('state', stateSel.value);
    const calls = await apiJson('/async/calls?' + q);
    const badge = st => h('span', { class: 'badge ' + ({ done: 'ok', dead: 'bad', retrying: 'warn' }[st] || '') }, st);
    body.replaceChildren(...calls.map(c => h('tr', {},
      h('td', { class: 'mono' }, h('button', { type: 'button', class: 'link', onclick: () => show(c.id) }, c.id)),
      h('td', {}, c.function), h('td', {}, badge(c.state)), h('td', { class: 'num' }, c.attempt),
      h('td', {}, c.status || '–'), h('td', {}, fmtTime(c.enqueuedAt)), h('td', {}, fmtTime(c.updatedAt)),
      h('td', { class: 'muted' }, c.error || ''),
      h('td', {}, c.state === 'dead' ? h('button', { onclick: () => act('redrive', c.id) }, 'Redrive')
        : (c.state === 'queued' || c.state === 'retrying') ? h('button', { onclick: () => act('cancel', c.id) }, 'Cancel') : null))));
    if (!calls.length) body.append(h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No async calls match.')));
  };
  fnSel.addEventListener('change', () => refresh().catch(e => status(e.message)));
  stateSel.addEventListener('change', () => refresh().catch(e => status(e.message)));
  await every(REFRESH_MS, refresh);
}

async function secretsView(view) {
  view.append(h('h1', {}, 'Secrets'),
    h('p', { class: 'muted' }, 'Names only: values are never shown, here or by the API. Create and update them with skyfri secret.'));
  const secrets = await apiJson('/secrets');
  view.append(h('table', { id: 'secrets' }, h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Namespace'))),
    h('tbody', {}, secrets.length ? secrets.map(x => h('tr', {}, h('td', { class: 'mono' }, x.name), h('td', {}, x.namespace)))
      : h('tr', {}, h('td', { colspan: 2, class: 'muted' }, 'No secrets.')))));
}

async function usageView(view) {
  const now = new Date();
  const month = h('input', { type: 'month', value: now.toISOString().slice(0, 7) });
  const box = h('div');
  view.append(h('h1', {}, 'Usage & cost'), h('div', { class: 'row' }, 'Month', month,
    h('span', { class: 'muted' }, 'what this usage would cost on a pay-per-request FaaS (skyfri cost)')), box);
  const load = async () => {
    const c = await apiJson('/cost?month=' + encodeURIComponent(month.value));
    const row = (label, u) => h('tr', {}, h('td', {}, label), h('td', { class: 'num' }, fmtInt(u.invocations)),
      h('td', { class: 'num' }, fmtMs(u.durationMs)), h('td', { class: 'num' }, u.gbSeconds.toFixed(2)),
      h('td', { class: 'num' }, c.cpuMetered ? u.cpuSeconds.toFixed(2) : '–'), h('td', { class: 'num' }, fmtUsd(u.listPriceUsd)));
    box.replaceChildren(
      h('table', { id: 'usage' }, h('thead', {}, h('tr', {}, ['Function', 'Invocations', 'Billed time', 'GB-seconds', 'CPU-seconds', 'At list price']
        .map((t, i) => h('th', { class: i ? 'num' : '' }, t)))),
      h('tbody', {}, c.functions.map(u => row(u.function, u)), row(h('b', {}, 'Total'), c.total))),
      h('div', { class: 'charts spaced' },
        h('div', { class: 'card' }, h('h3', {}, 'Pay-per-request bill (free tier taken off)'),
          h('p', {}, h('b', { class: 'big' }, fmtUsd(c.payPerRequestUsd))),
          h('p', { class: 'muted' }, 'requests ' + fmtUsd(c.requestsUsd) + ' + compute ' + fmtUsd(c.computeUsd))),
        h('div', { class: 'card' }, h('h3', {}, 'Your servers'),
          h('p', {}, h('b', { class: 'big' }, c.serverMonthlyUsd ? fmtUsd(c.serverMonthlyUsd) : 'not set')),
          h('p', { class: 'muted' }, c.breakEvenInvocations ? 'break-even at ' + fmtInt(c.breakEvenInvocations) + ' invocations a month'
            : 'set server_monthly_usd in prices.yaml for the break-even volume'))),
      h('p', { class: 'muted' }, 'Prices: ' + c.pricesFrom + '. Usage stored ' + fmtTime(c.flushedAt) + '.'),
      c.pricesError ? h('p', { class: 'error' }, c.pricesError) : '');
  };
  month.addEventListener('change', () => load().catch(e => status(e.message)));
  await load();
}

// ---- routing and login ----
async function route() {
  for (const c of cleanups) c();
  cleanups = [];
  status('');
  if (!session) return;
  const view = $('#view');
  view.replaceChildren();
  const hash = location.hash.replace(/^#/, '') || '/';
  const [pathPart, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const section = parts[0] === 'fn' ? 'functions' : (parts[0] || 'functions');
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === section);
  try {
    if (parts[0] === 'fn' && parts[1]) await functionView(view, parts[1], parts[2] || 'overview');
    else if (parts[0] === 'async') await asyncView(view, params);
    else if (parts[0] === 'secrets') await secretsView(view);
    else if (parts[0] === 'usage') await usageView(view);
    else await functionsView(view);
  } catch (e) {
    if (e.status !== 401) status(e.message);
  }
}

function showLogin(message) {
  for (const c of cleanups) c();
  cleanups = [];
  session = null;
  $('#view').hidden = true;
  $('#nav').hidden = $('#who').hidden = $('#logout').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message || '';
}

function loggedIn(info) {
  session = info;
  $('#login').hidden = true;
  $('#view').hidden = false;
  $('#nav').hidden = $('#who').hidden = $('#logout').hidden = false;
  $('#who').textContent = info.who + ' (' + info.scopes.join(', ') + ')';
  route();
}

async function login(ev) {
  ev.preventDefault();
  const form = ev.target;
  const byToken = form.kind.value === 'token';
  const body = byToken ? { token: form.token.value } : { user: form.user.value, password: form.password.value };
  const button = $('button[type=submit]', form);
  button.disabled = true;
  try {
    const r = await fetch('/ui/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), credentials: 'same-origin' });
    if (!r.ok) { $('#login-error').textContent = (await errorOf(r)).message; return; }
    form.password.value = ''; form.token.value = '';
    loggedIn(await r.json());
  } catch (e) {
    $('#login-error').textContent = e.message;
  } finally { button.disabled = false; }
}

async function logout() {
  try { await call('/ui/logout', { method: 'POST' }); } catch (_) { /* gone already */ }
  showLogin('Logged out.');
}

document.addEventListener('DOMContentLoaded', async () => {
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  for (const r of document.querySelectorAll('input[name=kind]')) {
    r.addEventListener('change', () => {
      const token = $('input[name=kind]:checked').value === 'token';
      $('.by-token').hidden = !token;
      $('.by-password').hidden = token;
    });
  }
  window.addEventListener('hashchange', route);
  const r = await fetch('/ui/session', { credentials: 'same-origin' });
  if (r.ok) loggedIn(await r.json()); else showLogin('');
});
