// The gateway's web console in headless Chromium (Debian's `chromium`,
// driven by playwright-core with `executablePath`). Each stdout line is a
// JSON step the Rust test checks:
//   {"ev":"login-refused","status":401}      no credential: the login form
//   {"ev":"loaded","stomp":N}                signed in through /console/#token=
//   {"ev":"connections-changed","before":N,"after":M,"account":..}
//   {"ev":"presence","online":B}            the presence table lists the RoomChannel client's user
//   {"ev":"watching","status":".."}          "watch as" resolved the credential
//   {"ev":"watch-event","text":".."}         an event shown in the watch view (one per marker)
//   {"ev":"published","text":".."}           the publish form's answer
//   {"ev":"screenshot","path":".."}
//   {"ev":"connections-dropped","after":N}
//   {"ev":"page-error",..} / {"ev":"console-error",..}
// Environment: CONSOLE (http://host:port), ADMIN, GW (ws://host:port),
// TOKEN (a client credential of user USER_ID of ACCOUNT), ACCOUNT, USER_ID, MARKER (text of the
// event the test publishes), SCREENSHOT (png path), CHROMIUM.
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const CONSOLE = env('CONSOLE');
const ADMIN = env('ADMIN');
const GW = env('GW');
const TOKEN = env('TOKEN');
const ACCOUNT = env('ACCOUNT');
const USER = env('USER_ID');
const MARKER = env('MARKER');
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const WAIT = {timeout: 60000};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  // Without the credential: the login form, answered 401.
  const anonymous = await browser.newContext();
  const refused = await (await anonymous.newPage()).goto(CONSOLE + '/console/');
  emit({ev: 'login-refused', status: refused.status(), form: (await refused.text()).includes('/console/login')});
  await anonymous.close();

  const context = await browser.newContext({viewport: {width: 1360, height: 900}});
  const page = await context.newPage();
  page.on('pageerror', (e) => emit({ev: 'page-error', message: String(e)}));
  // The link development mode prints: the fragment signs in (the first
  // answer is the login form, 401, which Chromium logs as an error).
  await page.goto(CONSOLE + '/console/#token=' + encodeURIComponent(ADMIN));
  await page.waitForFunction(() => document.body.dataset.updated && /^\d+$/.test(document.getElementById('conn-stomp').textContent), null, WAIT);
  page.on('console', (m) => { if (m.type() === 'error') emit({ev: 'console-error', text: m.text()}); });
  const count = () => page.$eval('#conn-stomp', (e) => Number(e.textContent));
  const before = await count();
  emit({ev: 'loaded', stomp: before, url: page.url()});

  // A STOMP client connects and subscribes: the live numbers follow.
  const stomp = new WebSocket(GW + '/ws.communication', ['v12.stomp']);
  await new Promise((resolve, reject) => {
    stomp.on('error', reject);
    stomp.on('open', () => stomp.send(`CONNECT\naccept-version:1.2\nhost:herald\nAuthorization:Bearer ${TOKEN}\n\n\0`));
    stomp.on('message', (data) => {
      if (String(data).startsWith('CONNECTED')) {
        stomp.send('SUBSCRIBE\nid:0\ndestination:/events\n\n\0');
        resolve();
      }
    });
  });
  await page.waitForFunction((n) => Number(document.getElementById('conn-stomp').textContent) > n, before, WAIT);
  await page.waitForFunction((a) => [...document.querySelectorAll('#accounts tbody tr')]
    .some((tr) => tr.cells[0].textContent === a && tr.cells[1].textContent === 'stomp' && tr.cells[3].textContent === '1'), ACCOUNT, WAIT);
  emit({ev: 'connections-changed', before, after: await count(), account: ACCOUNT,
    subscriptions: await page.$eval('#subs-stomp', (e) => Number(e.textContent))});

  // An ActionCable RoomChannel client reports presence: the presence
  // table of the account lists its user.
  const cable = new WebSocket(GW + '/cable', ['actioncable-v1-json']);
  const identifier = JSON.stringify({channel: 'RoomChannel', pubsub_token: TOKEN, account_id: Number(ACCOUNT), user_id: Number(USER)});
  await new Promise((resolve, reject) => {
    cable.on('error', reject);
    cable.on('message', (data) => {
      const m = JSON.parse(String(data));
      if (m.type === 'welcome') cable.send(JSON.stringify({command: 'subscribe', identifier}));
      if (m.type === 'confirm_subscription') {
        cable.send(JSON.stringify({command: 'message', identifier, data: JSON.stringify({action: 'update_presence'})}));
        resolve();
      }
    });
  });
  await page.waitForFunction(() => Number(document.getElementById('conn-actioncable').textContent) >= 1, null, WAIT);
  // The heartbeat goes through Kafka; the table follows the live updates.
  await page.fill('#presence-account', ACCOUNT);
  await page.click('#presence-form button[type=submit]');
  await page.waitForFunction((u) => [...document.querySelectorAll('#presence tbody tr')]
    .some((tr) => tr.cells[0].textContent === 'user' && tr.cells[1].textContent === u), USER, WAIT);
  emit({ev: 'presence', online: true});

  // Watch as the client's credential.
  await page.fill('#watch-credential', TOKEN);
  await page.click('#watch-start');
  await page.waitForSelector('#watch-panel[data-watching="true"]', WAIT);
  emit({ev: 'watching', status: await page.textContent('#watch-status')});

  // The test publishes through the producer; the event shows up.
  const shown = await page.waitForSelector(`#watch-events li:has-text(${JSON.stringify(MARKER)})`, WAIT);
  emit({ev: 'watch-event', text: await shown.textContent()});

  // The publish form (development mode) goes through the producer too.
  if (await page.isVisible('#publish-panel')) {
    const formMarker = MARKER + '-form';
    await page.fill('#publish-type', 'tag.updated');
    await page.fill('#publish-account', ACCOUNT);
    await page.fill('#publish-payload', JSON.stringify({id: 't-form', name: formMarker, color: 'tag-blue'}));
    await page.click('#publish-form button[type=submit]');
    await page.waitForFunction(() => document.getElementById('publish-result').textContent.length > 0, null, WAIT);
    emit({ev: 'published', text: await page.textContent('#publish-result')});
    const second = await page.waitForSelector(`#watch-events li:has-text(${JSON.stringify(formMarker)})`, WAIT);
    emit({ev: 'watch-event', text: await second.textContent()});
  }

  // Wait until the latency card has numbers, for the picture.
  await page.waitForFunction(() => /ms$/.test(document.getElementById('lat-d-p50').textContent), null, WAIT);
  const shot = process.env.SCREENSHOT;
  if (shot) {
    await page.screenshot({path: shot, fullPage: true});
    emit({ev: 'screenshot', path: shot});
  }

  stomp.close();
  cable.close();
  await page.waitForFunction((n) => Number(document.getElementById('conn-stomp').textContent) === n, before, WAIT);
  emit({ev: 'connections-dropped', after: await count()});
} catch (e) {
  emit({ev: 'failed', message: String(e && e.stack || e)});
} finally {
  await browser.close();
}
