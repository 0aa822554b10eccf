// An independent TypeID client (plain `ws`, written from docs/protocols/typeid.md, not from
// the server code). Prints one JSON line per step; the Rust test drives the
// rest through stdin ("go" lines).
// Usage: node typeid_client.mjs <url> <session-id> <user-id> <conversation-id>
import WebSocket from 'ws';
import readline from 'node:readline';

const [url, sessionId, userId, conversationId] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (m) => { say({ step: 'fail', message: m }); process.exit(1); };
setTimeout(() => fail('timed out'), 60000);

const ws = new WebSocket(url);
const frames = [];
let waiter = null;
ws.on('message', (data) => {
  const f = JSON.parse(data.toString());
  if (typeof f.TypeID !== 'number' || typeof f.Body !== 'object') fail(`bad frame ${data}`);
  frames.push(f);
  if (waiter) { const w = waiter; waiter = null; w(); }
});
ws.on('close', (code) => say({ step: 'closed', code }));
const next = async (typeId) => {
  for (;;) {
    const i = frames.findIndex((f) => f.TypeID === typeId);
    if (i >= 0) return frames.splice(i, 1)[0];
    await new Promise((r) => { waiter = r; });
  }
};
const stdin = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

await new Promise((r) => ws.on('open', r));
ws.send(JSON.stringify({ TypeID: -2101997347, Body: {
  CipherAlgorithm: 0, CipherStrength: 0, ClientVersion: '7.0.30', MachineKey: 'mk',
  PublicKey: null, SessionID: sessionId, Status: 1, UserID: Number(userId),
} }));
const join = await next(-815187584);
if (join.Body.Status !== 1) fail(`join status ${join.Body.Status}`);
if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/.test(join.Body.ServerTime)) fail(`ServerTime ${join.Body.ServerTime}`);
if (!('EncryptedSessionKey' in join.Body) || join.Body.EncryptedSessionKey !== null) fail('EncryptedSessionKey must be null');
say({ step: 'joined', serverTime: join.Body.ServerTime });

ws.send(JSON.stringify({ TypeID: -476754606, Body: { Signal: true } }));
const pong = await next(-476754606);
if (pong.Body.Signal !== true) fail('ping not echoed');
say({ step: 'pinged' });

await stdin.next(); // the test publishes a notification now
const note = await next(-635182161);
say({ step: 'notified', body: note.Body });

const clientId = 'c0ffee00-0000-4000-8000-000000000001';
ws.send(JSON.stringify({ TypeID: -2124552136, Body: {
  ConversationID: conversationId, AttachmentID: null, ClientID: clientId, Message: 'hello from node',
} }));
const resp = await next(705131365);
say({ step: 'responded', body: resp.Body });
ws.close();
process.exit(0);
