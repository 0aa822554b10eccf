// The Herald console: live numbers over server-sent events
// (/console/api/live), presence on demand, "watch as" over a streamed
// NDJSON answer, and the development-mode publish form. Every value is
// written with textContent: nothing from the server is parsed as HTML.
'use strict';

const $ = (id) => document.getElementById(id);
const text = (id, v) => { $(id).textContent = v === null || v === undefined ? '–' : String(v); };
const ms = (v) => (v === null || v === undefined ? '–' : v < 1 ? v.toFixed(3) + ' ms' : v.toFixed(1) + ' ms');
const bytes = (n) => (n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB');
const PROTOCOLS = ['stomp', 'actioncable', 'typeid'];

function fillTable(tableId, rows, emptyId) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement('tr');
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c === null || c === undefined ? '–' : String(c);
      tr.append(td);
    }
    return tr;
  }));
  $(emptyId).hidden = rows.length > 0;
}

function duration(secs) {
  const h = Math.floor(secs / 3600), m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return 'up ' + (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + s + 's';
}

function render(o) {
  const status = $('status');
  status.textContent = o.ready ? 'ready' : 'not ready';
  status.className = 'pill ' + (o.ready ? 'ok' : 'bad');
  text('uptime', duration(o.uptime_secs));
  let conns = 0, subs = 0;
  for (const p of PROTOCOLS) {
    text('conn-' + p, o.connections[p]);
    text('subs-' + p, o.subscriptions[p]);
    conns += o.connections[p];
    subs += o.subscriptions[p];
  }
  text('total-connections', conns);
  text('total-subscriptions', subs);
  const l = o.latency || {};
  text('latency-window', l.window_secs ? '(last ' + l.window_secs + ' s)' : '');
  for (const [key, h] of [['d', l.delivery], ['g', l.gateway]]) {
    text('lat-' + key + '-count', h ? h.count : null);
    text('lat-' + key + '-p50', h ? ms(h.p50_ms) : null);
    text('lat-' + key + '-p95', h ? ms(h.p95_ms) : null);
    text('lat-' + key + '-p99', h ? ms(h.p99_ms) : null);
  }
  text('identities', o.identities);
  text('history-bytes', bytes(o.history_bytes));
  text('not-ready', o.not_ready.length ? o.not_ready.join(', ') : 'nothing');
  fillTable('accounts', o.accounts.map((a) => [a.account, a.protocol, a.connections, a.subscriptions]), 'accounts-empty');
  fillTable('partitions', o.partitions.map((p) => [p.topic, p.partition, p.next_offset, p.high_watermark, p.lag]), 'partitions-empty');
  const online = o.presence_accounts.map((a) => a.account + ' (' + a.online + ')');
  text('presence-accounts', online.length ? 'Online now in accounts: ' + online.join(', ') : 'Nobody online on any account.');
  $('publish-panel').hidden = !o.publish;
  document.body.dataset.updated = String(Date.now());
}

function live() {
  const source = new EventSource('/console/api/live');
  source.addEventListener('overview', (e) => { render(JSON.parse(e.data)); refreshPresence(); });
  source.onerror = () => {
    const status = $('status');
    status.textContent = 'reconnecting…';
    status.className = 'pill bad';
  };
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body),
  };
  const r = await fetch(path, init);
  if (r.status === 401) { window.location.reload(); throw new Error('signed out'); }
  return r;
}

// The chosen account's presence, refreshed with every live update.
let presenceAccount = null;
let presenceBusy = false;

async function refreshPresence() {
  if (presenceAccount === null || presenceBusy) return;
  presenceBusy = true;
  try {
    const r = await api('/console/api/presence?account=' + encodeURIComponent(presenceAccount));
    const p = await r.json();
    if (!r.ok) { $('presence-empty').textContent = p.error; fillTable('presence', [], 'presence-empty'); return; }
    const seen = (x) => (x.last_seen_ms_ago / 1000).toFixed(1) + ' s ago';
    const rows = [...p.users.map((u) => ['user', u.id, seen(u)]), ...p.contacts.map((c) => ['contact', c.id, seen(c)])];
    $('presence-empty').textContent = 'Nobody of account ' + p.account + ' is online.';
    fillTable('presence', rows, 'presence-empty');
  } finally {
    presenceBusy = false;
  }
}

$('presence-form').addEventListener('submit', (e) => {
  e.preventDefault();
  presenceAccount = $('presence-account').value.trim();
  refreshPresence();
});

$('publish-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('publish-result');
  let payload;
  try { payload = JSON.parse($('publish-payload').value); } catch (err) { out.textContent = 'The payload is not JSON: ' + err.message; return; }
  const event = {type: $('publish-type').value.trim(), account_id: $('publish-account').value.trim(), payload};
  const r = await api('/console/api/publish', event);
  const answer = await r.json();
  out.textContent = r.ok ? 'producer answered ' + answer.status + ': ' + JSON.stringify(answer.response) : answer.error;
});

let watching = null;
const MAX_EVENTS = 200;

function watchStatus(s, cls) {
  const el = $('watch-status');
  el.textContent = s;
  el.className = cls || 'muted';
}

function showEvent(ev) {
  const li = document.createElement('li');
  li.className = 'event';
  const head = document.createElement('div');
  const type = document.createElement('strong');
  type.textContent = ev.type;
  const where = document.createElement('span');
  where.className = 'muted';
  where.textContent = ' ' + ev.position +
    (ev.dropped_before ? ' · ' + ev.dropped_before + ' dropped (console too slow)' : '');
  head.append(type, where);
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(ev.envelope, null, 2);
  li.append(head, pre);
  const list = $('watch-events');
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

async function watch(credential) {
  const controller = new AbortController();
  watching = controller;
  $('watch-start').disabled = true;
  $('watch-stop').disabled = false;
  $('watch-events').replaceChildren();
  watchStatus('resolving the credential…');
  try {
    const r = await fetch('/console/api/watch', {
      method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({credential}), signal: controller.signal,
    });
    if (!r.ok) {
      const err = await r.json().catch(() => ({error: 'HTTP ' + r.status}));
      watchStatus(err.error, 'error');
      return;
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
        if (msg.kind === 'identity') {
          const exp = msg.expires_at ? ', expires ' + new Date(msg.expires_at * 1000).toISOString() : '';
          watchStatus('Watching as ' + msg.principal + ' ' + msg.id + ' (role ' + msg.role + ') of account ' +
            msg.account_id + (msg.opaque ? ', opaque token' : ', JWT') + exp + '.', 'ok');
          $('watch-panel').dataset.watching = 'true';
        } else if (msg.kind === 'event') {
          showEvent(msg);
        } else if (msg.kind === 'end') {
          watchStatus('The watch ended: ' + msg.reason + '.', 'error');
        }
      }
    }
  } catch (err) {
    if (err.name !== 'AbortError') watchStatus('The watch failed: ' + err.message, 'error');
    else watchStatus('Stopped.');
  } finally {
    delete $('watch-panel').dataset.watching;
    $('watch-start').disabled = false;
    $('watch-stop').disabled = true;
    watching = null;
  }
}

$('watch-form').addEventListener('submit', (e) => {
  e.preventDefault();
  if (!watching) watch($('watch-credential').value.trim());
});
$('watch-stop').addEventListener('click', () => { if (watching) watching.abort(); });

live();
