// Headless Chromium (Debian's `chromium` through playwright-core, no browser
// download) with a page on loopback whose clients are left to their own
// reconnect logic while the gateway behind GW is stopped and started again on
// the same port: @stomp/stompjs (reconnectDelay), @rails/actioncable (its
// ConnectionMonitor) and @anycable/web over actioncable-v1-ext-json (its
// Monitor; on reconnect it asks for the history of the streams it saw).
// Each stdout line is a JSON event of the page:
//   {"ev":"connected","client":"stomp"|"rails"|"anycable"}   (subscription confirmed)
//   {"ev":"disconnected","client":..}
//   {"ev":"message","client":..,"data":<event as the client library hands it over>}
//   {"ev":"page-error"|"console-error",..}
// Environment: GW (ws://host:port), TOKEN, ACCOUNT, USER_ID, PAGE_PORT,
// CHROMIUM (default /usr/bin/chromium). Ends when stdin closes.
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
const GW = ${JSON.stringify(GW)}, TOKEN = ${JSON.stringify(env('TOKEN'))};
const ACCOUNT = Number(${JSON.stringify(env('ACCOUNT'))}), USER = Number(${JSON.stringify(env('USER_ID'))});
const report = (o) => window.report(o);
const params = {pubsub_token: TOKEN, account_id: ACCOUNT, user_id: USER};

// @stomp/stompjs: retries every reconnectDelay ms after the socket closes.
const stomp = new StompJs.Client({
  brokerURL: GW + '/ws.communication',
  connectHeaders: {Authorization: 'Bearer ' + TOKEN},
  reconnectDelay: 200,
});
let subscriptions = 0;
stomp.onConnect = () => {
  // Connected once the gateway confirmed the SUBSCRIBE with a RECEIPT.
  const receipt = 'sub-' + ++subscriptions;
  stomp.watchForReceipt(receipt, () => report({ev: 'connected', client: 'stomp'}));
  stomp.subscribe('/events', (m) => report({ev: 'message', client: 'stomp', data: JSON.parse(m.body)}), {receipt});
};
stomp.onWebSocketClose = () => report({ev: 'disconnected', client: 'stomp'});
stomp.activate();

// @rails/actioncable: its ConnectionMonitor reopens a closed connection and
// the consumer subscribes again.
const rails = ActionCable.createConsumer(GW + '/cable');
rails.subscriptions.create({channel: 'RoomChannel', ...params}, {
  connected() { report({ev: 'connected', client: 'rails'}); },
  disconnected() { report({ev: 'disconnected', client: 'rails'}); },
  received(data) { report({ev: 'message', client: 'rails', data}); },
});

// @anycable/web over actioncable-v1-ext-json: resubscribes with
// history: {since, streams: {stream_id: {epoch, offset}}}.
const { createCable } = await import('@anycable/web');
const anycable = createCable(GW + '/cable', {protocol: 'actioncable-v1-ext-json', logLevel: 'error'});
const channel = anycable.subscribeTo('RoomChannel', params);
channel.on('connect', () => report({ev: 'connected', client: 'anycable'}));
channel.on('disconnect', () => report({ev: 'disconnected', client: 'anycable'}));
channel.on('message', (data) => report({ev: 'message', client: 'anycable', data}));
</script></body></html>`;

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/') {
    res.writeHead(200, {'content-type': 'text/html'});
    res.end(page);
    return;
  }
  if (url.pathname === '/favicon.ico') {
    res.writeHead(204);
    res.end();
    return;
  }
  const file = path.join(here, path.normalize(url.pathname));
  if (!file.startsWith(path.join(here, 'node_modules')) || !fs.existsSync(file)) {
    process.stderr.write(`browser_reconnect: 404 ${url.pathname}\n`);
    res.writeHead(404);
    res.end();
    return;
  }
  res.writeHead(200, {'content-type': 'text/javascript'});
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(Number(env('PAGE_PORT')), '127.0.0.1', resolve));

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
process.stdin.resume();
process.stdin.on('end', async () => {
  await browser.close();
  process.exit(0);
});
