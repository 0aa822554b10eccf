// Headless Chromium (Debian's `chromium`, driven by playwright-core with
// `executablePath`; no browser download) loading a page served on loopback
// that uses the browser builds of @stomp/stompjs and @rails/actioncable, the
// ESM build of @anycable/web (through an import map), and plain WebSocket for
// the Pulse stream and TypeID. Each stdout line is a JSON event of the page:
//   {"ev":"stomp-connected"} {"ev":"stomp-message","body":..}
//   {"ev":"rails-connected"} {"ev":"rails-message","data":..}
//   {"ev":"anycable-connected"} {"ev":"anycable-message","data":..}
//   {"ev":"stream-confirmed","extensions":E} {"ev":"stream-message","data":..}
//   {"ev":"typeid-joined","status":N,"extensions":E}   (E: the negotiated WebSocket extensions)
//   {"ev":"other-origin","opened":B,"code":N}   (page of a second origin)
// Environment: GW (ws://host:port), TOKEN, ACCOUNT, USER, PAGE_PORT,
// OTHER_PORT, CHROMIUM (default /usr/bin/chromium).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const GW = env('GW');
const TOKEN = env('TOKEN');
const ACCOUNT = env('ACCOUNT');
const USER = env('USER_ID');
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const page = `<!doctype html>
<html><head><meta charset="utf-8">
<script type="importmap">
{"imports": {
  "@anycable/web": "/node_modules/@anycable/web/index.js",
  "@anycable/core": "/node_modules/@anycable/core/index.js",
  "nanoevents": "/node_modules/nanoevents/index.js"
}}
</script>
<script src="/node_modules/@stomp/stompjs/bundles/stomp.umd.js"></script>
<script src="/node_modules/@rails/actioncable/app/assets/javascripts/actioncable.js"></script>
</head><body>
<script type="module">
const GW = ${JSON.stringify(GW)}, TOKEN = ${JSON.stringify(TOKEN)};
const ACCOUNT = ${JSON.stringify(ACCOUNT)}, USER = ${JSON.stringify(USER)};
const report = (o) => window.report(o);
const room = {channel: 'RoomChannel', pubsub_token: TOKEN, account_id: Number(ACCOUNT), user_id: Number(USER)};

// STOMP: credentials in the CONNECT frame (browsers send no custom headers on the upgrade).
const stomp = new StompJs.Client({
  brokerURL: GW + '/ws.communication',
  connectHeaders: {Authorization: 'Bearer ' + TOKEN},
  reconnectDelay: 500,
});
stomp.onConnect = () => {
  report({ev: 'stomp-connected'});
  stomp.subscribe('/events', (m) => report({ev: 'stomp-message', body: JSON.parse(m.body)}));
};
stomp.activate();

// @rails/actioncable: the credential in the subscription identifier.
const rails = ActionCable.createConsumer(GW + '/cable');
rails.subscriptions.create(room, {
  connected() { report({ev: 'rails-connected'}); },
  received(data) { report({ev: 'rails-message', data}); },
});

// @anycable/web over actioncable-v1-ext-json.
const { createCable } = await import('@anycable/web');
const anycable = createCable(GW + '/cable', {protocol: 'actioncable-v1-ext-json', logLevel: 'error'});
const channel = anycable.subscribeTo('RoomChannel', {pubsub_token: TOKEN, account_id: Number(ACCOUNT), user_id: Number(USER)});
channel.on('connect', () => report({ev: 'anycable-connected'}));
channel.on('message', (data) => report({ev: 'anycable-message', data}));

// Pulse stream: the credential in the query string, plain WebSocket.
const stream = new WebSocket(GW + '/stream?account_id=' + ACCOUNT + '&token=' + encodeURIComponent(TOKEN), 'actioncable-v1-json');
stream.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type === 'welcome') {
    stream.send(JSON.stringify({command: 'subscribe', identifier: JSON.stringify({channel: 'NotificationsChannel'})}));
  } else if (m.type === 'confirm_subscription') {
    report({ev: 'stream-confirmed', extensions: stream.extensions});
  } else if (m.type === undefined && m.message !== undefined) {
    report({ev: 'stream-message', data: m.message});
  }
};

// TypeID: JoinRequest as the first frame.
const typeid = new WebSocket(GW + '/notifications');
typeid.onopen = () => typeid.send(JSON.stringify({TypeID: -2101997347, Body: {CipherAlgorithm: 0, CipherStrength: 0, ClientVersion: '7.0.30', MachineKey: 'mk', PublicKey: null, SessionID: TOKEN, Status: 1, UserID: Number(USER)}}));
typeid.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.TypeID === -815187584) report({ev: 'typeid-joined', status: m.Body.Status, extensions: typeid.extensions});
};
</script></body></html>`;

const other = `<!doctype html><html><body><script>
const ws = new WebSocket(${JSON.stringify(GW + '/cable')});
let opened = false;
ws.onopen = () => { opened = true; };
ws.onclose = (e) => window.report({ev: 'other-origin', opened, code: e.code});
</script></body></html>`;

function serve(port, html) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/') {
      res.writeHead(200, {'content-type': 'text/html'});
      res.end(html);
      return;
    }
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return;
    }
    const file = path.join(here, path.normalize(url.pathname));
    if (!file.startsWith(path.join(here, 'node_modules')) || !fs.existsSync(file)) {
      process.stderr.write(`browser_e2e: 404 ${url.pathname}\n`);
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, {'content-type': 'text/javascript'});
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

await serve(Number(env('PAGE_PORT')), page);
await serve(Number(env('OTHER_PORT')), other);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const context = await browser.newContext();
await context.exposeFunction('report', (o) => emit(o));
const main = await context.newPage();
main.on('pageerror', (e) => emit({ev: 'page-error', message: String(e)}));
main.on('console', (m) => { if (m.type() === 'error') emit({ev: 'console-error', text: m.text()}); });
await main.goto(`http://127.0.0.1:${env('PAGE_PORT')}/`);
const second = await context.newPage();
await second.goto(`http://127.0.0.1:${env('OTHER_PORT')}/`);
emit({ev: 'loaded'});
// Until the test closes stdin.
process.stdin.resume();
process.stdin.on('end', async () => {
  await browser.close();
  process.exit(0);
});
