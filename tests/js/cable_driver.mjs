// A stdin/stdout driver around real ActionCable npm clients, used by the Rust
// end-to-end tests: each stdin line is a JSON command, each stdout line a JSON
// event. Client: `rails` (@rails/actioncable) or `anycable` (@anycable/web).
//
// Commands: {"op":"connect","url":U}  {"op":"subscribe","key":K,"params":{...}}
//           {"op":"unsubscribe","key":K}  {"op":"perform","key":K,"action":A,"data":{...}}
//           {"op":"seturl","url":U} (where the next reconnect goes)  {"op":"exit"}
//           {"op":"extensions"} (rails: the socket's negotiated extensions)
// Events:   {"ev":"connected","key":K} {"ev":"rejected","key":K} {"ev":"received","key":K,"data":..}
//           {"ev":"disconnected","key":K,"willAttemptReconnect":B} {"ev":"error","message":..}
//           {"ev":"extensions","value":E}
import WebSocket from 'ws';
import readline from 'node:readline';

// Browser globals the clients touch. WS_DEFLATE_THRESHOLD=N: offer
// permessage-deflate and compress every sent message of N bytes or more.
const threshold = process.env.WS_DEFLATE_THRESHOLD;
class CompressingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { perMessageDeflate: { threshold: Number(threshold) } });
  }
}
globalThis.WebSocket = threshold === undefined ? WebSocket : CompressingWebSocket;
globalThis.addEventListener ??= () => {};
globalThis.removeEventListener ??= () => {};
globalThis.document ??= {
  visibilityState: 'visible',
  addEventListener() {},
  removeEventListener() {},
  head: { querySelector() { return null; } },
};

const kind = process.argv[2] || 'rails';
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const subs = new Map();
let consumer = null;

const ActionCable = kind === 'rails' ? await import('@rails/actioncable') : null;
const AnyCable = kind === 'anycable' ? await import('@anycable/web') : null;
let cable = null;
let railsUrl = null;

function connect(url) {
  if (AnyCable) {
    cable = AnyCable.createCable(url, {
      protocol: 'actioncable-v1-ext-json',
      websocketImplementation: globalThis.WebSocket,
      logLevel: 'error',
    });
    return;
  }
  // A function, as applications pass one to pick the URL per connection:
  // every (re)connect asks it, so `seturl` moves the next reconnect.
  railsUrl = url;
  consumer = ActionCable.createConsumer(() => railsUrl);
}

function subscribeAny(key, params) {
  const { channel: name, ...rest } = params;
  const channel = cable.subscribeTo(name, rest);
  channel.on('connect', () => emit({ ev: 'connected', key }));
  channel.on('disconnect', () => emit({ ev: 'disconnected', key, willAttemptReconnect: true }));
  channel.on('close', (err) => emit({ ev: 'closed', key, message: String(err || '') }));
  channel.on('message', (data, meta) => emit({ ev: 'received', key, data, meta: meta || null }));
  channel.on('info', (info) => emit({ ev: 'info', key, type: info.type }));
  subs.set(key, channel);
}

function subscribe(key, params) {
  if (AnyCable) return subscribeAny(key, params);
  const sub = consumer.subscriptions.create(params, {
    connected() { emit({ ev: 'connected', key }); },
    disconnected(opts = {}) { emit({ ev: 'disconnected', key, willAttemptReconnect: !!opts.willAttemptReconnect }); },
    rejected() { emit({ ev: 'rejected', key }); },
    received(data) { emit({ ev: 'received', key, data }); },
  });
  subs.set(key, sub);
}

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { emit({ ev: 'error', message: `bad command ${line}` }); continue; }
  try {
    switch (cmd.op) {
      case 'connect': connect(cmd.url); emit({ ev: 'ok', op: 'connect' }); break;
      case 'subscribe': subscribe(cmd.key, cmd.params); break;
      case 'extensions': emit({ ev: 'extensions', value: consumer?.connection?.webSocket?.extensions ?? null }); break;
      case 'unsubscribe': subs.get(cmd.key)?.unsubscribe(); subs.delete(cmd.key); emit({ ev: 'ok', op: 'unsubscribe', key: cmd.key }); break;
      case 'perform': subs.get(cmd.key)?.perform(cmd.action, cmd.data || {}); emit({ ev: 'ok', op: 'perform', key: cmd.key }); break;
      case 'seturl':
        if (cable) cable.transport.setURL(cmd.url); else railsUrl = cmd.url;
        emit({ ev: 'ok', op: 'seturl' });
        break;
      case 'exit': consumer?.disconnect(); cable?.disconnect(); process.exit(0);
      default: emit({ ev: 'error', message: `unknown op ${cmd.op}` });
    }
  } catch (e) {
    emit({ ev: 'error', message: String(e && e.stack || e) });
  }
}
process.exit(0);
