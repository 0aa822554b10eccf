// End-to-end check with the real @stomp/stompjs client (as Airy's web UI uses it).
// Usage: node stomp_e2e.mjs <ws-url> <producer-events-url> <good-token> <bad-token> <account>
// Prints one line per verified step; exits non-zero on the first failure.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

// WS_DEFLATE=1: offer permessage-deflate and compress every message this
// client sends (ws's default threshold skips messages under 1 KiB).
class CompressingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { perMessageDeflate: { threshold: 0 } });
  }
}
const deflate = process.env.WS_DEFLATE === '1';
Object.assign(globalThis, { WebSocket: deflate ? CompressingWebSocket : WebSocket });

const [wsUrl, eventsUrl, goodToken, badToken, account] = process.argv.slice(2);
const fail = (msg) => { console.error(`FAIL ${msg}`); process.exit(1); };
const timer = setTimeout(() => fail('timed out'), 60000);

function client(token) {
  return new Client({
    brokerURL: wsUrl,
    connectHeaders: { Authorization: `Bearer ${token}` },
    reconnectDelay: 0,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
  });
}

async function badTokenIsRefused() {
  await new Promise((resolve) => {
    const c = client(badToken);
    c.onConnect = () => fail('connected with a bad token');
    c.onStompError = (frame) => {
      if (!frame.headers.message.includes('401')) fail(`ERROR message lacks 401: ${frame.headers.message}`);
      console.log(`OK bad token refused: ${frame.headers.message}`);
      c.deactivate().then(resolve);
    };
    c.activate();
  });
}

async function receivesPublishedEvent() {
  const c = client(goodToken);
  const connected = new Promise((resolve) => { c.onConnect = resolve; });
  c.onStompError = (f) => fail(`unexpected ERROR ${f.headers.message}`);
  c.activate();
  const frame = await connected;
  console.log(`OK connected version=${frame.headers.version} server=${frame.headers.server}`);
  if (deflate) console.log(`OK extensions=${c.webSocket.extensions}`);

  const received = new Promise((resolve) => {
    c.subscribe('/events', (message) => resolve(message), { receipt: 'sub-events' });
  });
  await new Promise((resolve) => c.watchForReceipt('sub-events', resolve));
  console.log('OK subscribed with receipt');

  const id = `stompjs-${Date.now()}`;
  const res = await fetch(eventsUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      type: 'tag.updated', account_id: account,
      payload: { id, name: 'vip', color: 'tag-red' },
    }),
  });
  if (res.status !== 200) fail(`publish answered ${res.status}: ${await res.text()}`);
  const message = await received;
  const body = JSON.parse(message.body);
  if (body.type !== 'tag.updated' || body.payload.id !== id || typeof body.timestamp !== 'number') {
    fail(`unexpected body ${message.body}`);
  }
  if (message.headers.destination !== '/events') fail(`destination ${message.headers.destination}`);
  console.log(`OK received ${body.type} ${body.payload.id}`);

  const disconnected = new Promise((resolve) => { c.onDisconnect = resolve; });
  await c.deactivate();
  const receipt = await disconnected;
  console.log(`OK disconnected with receipt ${receipt.headers['receipt-id']}`);
}

await badTokenIsRefused();
await receivesPublishedEvent();
clearTimeout(timer);
console.log('ALL OK');
process.exit(0);
