// End-to-end test of the OptiRoute web UI in a real browser (Debian chromium via playwright-core).
//
//   node tests/e2e/ui.test.mjs
//
// Env:
//   OPTIROUTE_URL   use an already running gateway at this base URL (nothing is spawned)
//   OPTIROUTE_BIN   binary to spawn otherwise (default target/debug/optiroute, relative to the repo root),
//                   run as `$OPTIROUTE_BIN serve --host 127.0.0.1 --port 0`
//   CHROMIUM_PATH   browser executable (default /usr/bin/chromium)
//
// Artifacts: target/e2e/ui.png (laptop width), target/e2e/ui-phone.png (390 px wide).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const ARTIFACTS = path.join(REPO, 'target', 'e2e');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const STARTUP_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 30_000;

let gateway = null; // child process, when we spawned one
let gatewayLog = [];
let baseUrl = '';
let context = null;
let userDataDir = '';

// Spawns `optiroute serve` (demo mode) and resolves with { child, url, log } once it listens.
function spawnGateway(extraEnv = {}, cwd = REPO) {
  const bin = path.resolve(REPO, process.env.OPTIROUTE_BIN || 'target/debug/optiroute');
  if (!fs.existsSync(bin)) {
    throw new Error(`gateway binary not found at ${bin} (build it, or set OPTIROUTE_BIN / OPTIROUTE_URL)`);
  }
  const child = spawn(bin, ['serve', '--host', '127.0.0.1', '--port', '0'], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1', ...extraEnv },
  });
  const log = [];
  const keep = (line) => {
    log.push(line);
    if (log.length > 200) log.shift();
  };
  createInterface({ input: child.stderr }).on('line', keep);
  const stdout = createInterface({ input: child.stdout });

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`gateway did not print OPTIROUTE_LISTENING within ${STARTUP_TIMEOUT_MS} ms\n` +
        log.join('\n')));
    }, STARTUP_TIMEOUT_MS);
    // Keep draining stdout for the whole run so the gateway never blocks on a full pipe.
    stdout.on('line', (line) => {
      keep(line);
      const m = /^OPTIROUTE_LISTENING\s+(https?:\/\/\S+)/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1].replace(/\/+$/, ''), log });
      }
    });
    child.once('error', (err) => { clearTimeout(timer); reject(err); });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited early (code ${code}, signal ${signal})\n${log.join('\n')}`));
    });
  });
}

async function startGateway() {
  const g = await spawnGateway();
  gateway = g.child;
  gatewayLog = g.log;
  return g.url;
}

async function killGateway(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

async function stopGateway() {
  const child = gateway;
  gateway = null;
  await killGateway(child);
}

// Every console error, page error and 4xx/5xx response outside /v1/ fails the test that was running
// when it happened, except those a test declares as expected with allow(regex) (e.g. the browser's own
// log of a 4xx response, or `HTTP 401 for http://…/api/stats`).
function watchPage(page) {
  const problems = [];
  const allowed = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error' && msg.type() !== 'assert') return;
    const text = msg.text();
    const loc = msg.location();
    const entry = `console.${msg.type()}: ${text}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`;
    if (allowed.some((re) => re.test(entry))) return;
    problems.push(entry);
  });
  page.on('pageerror', (err) => problems.push(`pageerror: ${err && err.stack ? err.stack : err}`));
  page.on('crash', () => problems.push('page crashed'));
  page.on('response', (res) => {
    // Anything but the gateway's deliberate answers on the API is a broken asset (e.g. favicon 404).
    const url = res.url();
    if (res.status() < 400 || url.includes('/v1/')) return;
    const entry = `HTTP ${res.status()} for ${url}`;
    if (!allowed.some((re) => re.test(entry))) problems.push(entry);
  });
  return {
    problems,
    allow(re) { allowed.push(re); },
    assertClean() { assert.deepEqual(problems, [], 'page reported errors'); },
  };
}

async function newPage(viewport) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  return page;
}

async function openApp(page) {
  const res = await page.goto(baseUrl + '/', { waitUntil: 'load' });
  assert.ok(res && res.ok(), `GET / answered ${res && res.status()}`);
  // The model picker is filled from GET /v1/models, `auto` first.
  await page.waitForSelector('[data-testid="model-select"][data-loaded="true"]');
  // The live panel has polled /api/stats at least once.
  await page.waitForSelector('[data-testid="stats-status"][data-updated]');
}

async function statValue(page, testid) {
  const v = await page.getAttribute(`[data-testid="${testid}"]`, 'data-value');
  return v === null ? null : Number(v);
}

// Sends a prompt with the keyboard (Enter) and waits for the assistant reply to settle.
async function ask(page, prompt) {
  const before = await page.locator('[data-testid="message"][data-role="assistant"]').count();
  const input = page.getByTestId('prompt-input');
  await input.fill(prompt);
  await input.press('Enter');
  const reply = page.locator('[data-testid="message"][data-role="assistant"]').nth(before);
  await reply.waitFor();
  await page.waitForFunction(
    (i) => {
      const m = document.querySelectorAll('[data-testid="message"][data-role="assistant"]')[i];
      return m && ['done', 'error', 'stopped'].includes(m.dataset.state);
    },
    before,
  );
  return reply;
}

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  if (process.env.OPTIROUTE_URL) {
    baseUrl = process.env.OPTIROUTE_URL.replace(/\/+$/, '');
  } else {
    baseUrl = await startGateway();
  }
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'optiroute-e2e-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
  });
});

after(async () => {
  if (context) await context.close().catch(() => {});
  await stopGateway();
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
});

test('page loads with security headers, models and a live panel', async () => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  const res = await page.goto(baseUrl + '/', { waitUntil: 'load' });
  assert.equal(res.status(), 200);
  // The page is built to run under the gateway's strict CSP (no inline script or style);
  // a violation would show up as a console error and fail every test.
  const csp = res.headers()['content-security-policy'] || '';
  assert.match(csp, /script-src 'self'/, `GET / sends a strict CSP (got "${csp}")`);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, 'CSP allows no inline code');
  for (const asset of ['/app.js', '/style.css']) {
    const r = await page.request.get(baseUrl + asset);
    assert.equal(r.status(), 200, `${asset} is served`);
    const type = r.headers()['content-type'] || '';
    assert.match(type, asset.endsWith('.js') ? /javascript/ : /text\/css/, `${asset} content-type: ${type}`);
  }
  await page.waitForSelector('[data-testid="model-select"][data-loaded="true"]');
  const options = await page.$$eval('[data-testid="model-select"] option', (os) => os.map((o) => o.value));
  assert.equal(options[0], 'auto', `first model is auto: ${options}`);
  assert.ok(options.length >= 2, `models listed: ${options}`);
  assert.equal(new Set(options).size, options.length, 'no duplicate models');
  await page.waitForSelector('[data-testid="stats-status"][data-updated]');
  const rows = await page.locator('[data-testid="deployment-row"]').count();
  assert.ok(rows >= 1, 'deployments listed in the live panel');
  for (const state of await page.locator('[data-testid="breaker"]').allTextContents()) {
    assert.match(state, /^(closed|open|half-open)$/);
  }
  // Keyboard: the message box has focus on load; Shift+Enter makes a new line and sends nothing.
  const input = page.getByTestId('prompt-input');
  assert.equal(await input.evaluate((n) => n === document.activeElement), true, 'prompt focused on load');
  await input.pressSequentially('line one');
  await input.press('Shift+Enter');
  await input.pressSequentially('line two');
  assert.equal(await input.inputValue(), 'line one\nline two');
  assert.equal(await page.locator('[data-testid="message"]').count(), 0, 'Shift+Enter does not send');
  for (const id of ['prompt-input', 'send-button', 'model-select', 'new-chat']) {
    const label = await page.getByTestId(id).evaluate((n) => n.getAttribute('aria-label') || n.labels?.[0]?.textContent);
    assert.ok(label && label.trim(), `${id} has an accessible label`);
  }
  watch.assertClean();
  await page.close();
});

test('chat streams a reply, a repeat is a cache hit, the live panel moves', async (t) => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  await openApp(page);

  const requests0 = await statValue(page, 'stat-requests');
  const cost0 = await statValue(page, 'stat-cost');
  const routed0 = (await statValue(page, 'stat-local')) + (await statValue(page, 'stat-cloud'));
  assert.ok(Number.isFinite(requests0), 'stat-requests has a numeric value');

  // Count how often the visible reply text grows while streaming (token-by-token rendering).
  await page.evaluate(() => {
    window.__growth = 0;
    let last = -1;
    new MutationObserver(() => {
      const m = [...document.querySelectorAll('[data-testid="message"][data-role="assistant"]')].pop();
      const len = m ? (m.querySelector('[data-testid="message-content"]')?.textContent || '').length : 0;
      if (len > last) { window.__growth += 1; last = len; }
    }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
  });

  const nonce = Math.random().toString(36).slice(2, 10);
  const prompt = `Explain in two sentences why caching helps an LLM gateway. [e2e ${nonce}]`;

  const first = await ask(page, prompt);
  assert.equal(await first.getAttribute('data-state'), 'done',
    `first reply finished: ${await first.textContent()}`);
  const text1 = (await first.getByTestId('message-content').textContent()).trim();
  assert.ok(text1.length > 0, 'first reply has text');
  const growth = await page.evaluate(() => window.__growth);
  assert.ok(growth >= 2, `reply was rendered incrementally (${growth} growth steps)`);
  t.diagnostic(`first reply rendered in ${growth} growth steps`);

  const meta1 = first.getByTestId('message-meta');
  await meta1.waitFor();
  assert.equal(await meta1.getAttribute('data-cache'), 'miss', `first reply is a cache miss: ${await meta1.textContent()}`);
  const metaText = await meta1.textContent();
  for (const id of ['meta-model', 'meta-reason', 'meta-cache', 'meta-latency', 'meta-ttft', 'meta-tokens', 'meta-cost', 'meta-saved']) {
    assert.equal(await first.getByTestId(id).count(), 1, `meta shows ${id}: ${metaText}`);
  }
  assert.doesNotMatch(await first.getByTestId('meta-model').textContent(), /unknown/, 'provider/model known');
  assert.doesNotMatch(await first.getByTestId('meta-tokens').textContent(), /–/, 'token usage known');
  assert.doesNotMatch(await first.getByTestId('meta-cost').textContent(), /–/, 'cost known');

  // An exact-match cache keys on the whole conversation: start a new chat and ask the same thing.
  await page.getByTestId('new-chat').click();
  assert.equal(await page.locator('[data-testid="message"]').count(), 0, 'new chat is empty');
  const second = await ask(page, prompt);
  assert.equal(await second.getAttribute('data-state'), 'done');
  const meta2 = second.getByTestId('message-meta');
  assert.equal(await meta2.getAttribute('data-cache'), 'hit', `second reply is a cache hit: ${await meta2.textContent()}`);
  assert.match(await second.getByTestId('meta-cache').textContent(), /cache hit/);
  t.diagnostic(`miss meta: ${metaText}`);
  t.diagnostic(`hit meta:  ${await meta2.textContent()}`);
  const text2 = (await second.getByTestId('message-content').textContent()).trim();
  assert.equal(text2, text1, 'cached reply replays the same text');

  // A follow-up carries the conversation so far (user, assistant, user).
  const sent = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/chat/completions') && r.method() === 'POST') sent.push(r.postDataJSON());
  });
  const followUp = 'And now the same in one short sentence.';
  const third = await ask(page, followUp);
  assert.equal(await third.getAttribute('data-state'), 'done');
  assert.equal(sent.length, 1);
  assert.equal(sent[0].stream, true);
  assert.deepEqual(sent[0].stream_options, { include_usage: true });
  assert.deepEqual(sent[0].messages.map((m) => m.role), ['user', 'assistant', 'user']);
  assert.equal(sent[0].messages[0].content, prompt);
  // The assistant turn is sent as raw markdown; its letters match what was rendered.
  const letters = (t) => t.replace(/[^A-Za-z0-9]/g, '').slice(0, 40);
  assert.equal(letters(sent[0].messages[1].content), letters(text2));
  assert.equal(sent[0].messages[2].content, followUp);

  // The user's messages are shown as plain text.
  const users = await page.locator('[data-testid="message"][data-role="user"]').allTextContents();
  assert.deepEqual(users.map((s) => s.trim()), [prompt, followUp]);

  // Live panel: the request counter moves by (at least) our two requests and the hit rate is positive.
  await page.waitForFunction(
    (r0) => Number(document.querySelector('[data-testid="stat-requests"]').dataset.value) >= r0 + 3,
    requests0,
  );
  await page.waitForFunction(
    () => Number(document.querySelector('[data-testid="stat-hit-rate"]').dataset.value) > 0,
  );
  const cost1 = await statValue(page, 'stat-cost');
  assert.ok(Number.isFinite(cost1) && cost1 >= cost0, `cost is a number and did not go down (${cost0} -> ${cost1})`);
  // The two misses were routed to a tier; the cache hit was answered without one.
  const routed1 = (await statValue(page, 'stat-local')) + (await statValue(page, 'stat-cloud'));
  assert.ok(routed1 >= routed0 + 2, `local/cloud split counts our routed requests (${routed0} -> ${routed1})`);

  // Let the chart pick up the new history point before the screenshot.
  const polled = Number(await page.getAttribute('[data-testid="stats-status"]', 'data-updated'));
  await page.waitForFunction(
    (t) => Number(document.querySelector('[data-testid="stats-status"]').dataset.updated) > t,
    polled,
  );
  await page.screenshot({ path: path.join(ARTIFACTS, 'ui.png') });

  watch.assertClean();
  await page.close();
});

test('markdown from the model is rendered, HTML in it is never interpreted', async () => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  await openApp(page);
  const html = await page.evaluate(() => window.OptiRouteUI.renderMarkdown(
    'Hello **bold** and *it* and `a<b>`\n\n- one\n- two <img src=x onerror="window.__pwned=1">\n\n' +
    '```js\nconst x = "<script>window.__pwned=2</script>";\n```\n\n<iframe src="javascript:alert(1)"></iframe>',
  ));
  assert.match(html, /<strong>bold<\/strong>/);
  assert.match(html, /<em>it<\/em>/);
  assert.match(html, /<code>a&lt;b&gt;<\/code>/);
  assert.match(html, /<ul><li>one<\/li><li>two &lt;img/);
  assert.match(html, /<pre><code class="lang-js">const x = &quot;&lt;script&gt;/);
  assert.doesNotMatch(html, /<(img|script|iframe)/i);

  // The same holds for what is actually put into the page.
  await page.evaluate((h) => {
    const d = document.createElement('div');
    d.className = 'md';
    d.innerHTML = h;
    document.body.append(d);
  }, html);
  assert.equal(await page.locator('.md img, .md script, .md iframe').count(), 0);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  // Incremental SSE parsing copes with events split anywhere and with CRLF line ends.
  const events = await page.evaluate(() => {
    const p = window.OptiRouteUI.createSseParser();
    const out = [];
    for (const piece of ['data: {"a"', ':1}\r', '\n\r\n: comment\n\nda', 'ta: [DONE]\n', '\n']) {
      out.push(...p.feed(piece));
    }
    return out;
  });
  assert.deepEqual(events, ['{"a":1}', '[DONE]']);
  watch.assertClean();
  await page.close();
});

test('a gateway error is shown in place with its message', async (t) => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  // Chromium logs every 4xx/5xx fetch as a console error; this one is deliberate.
  watch.allow(/Failed to load resource: the server responded with a status of 4\d\d/);
  await openApp(page);
  const bogus = 'no-such-model-e2e';
  await page.evaluate((id) => {
    const sel = document.querySelector('[data-testid="model-select"]');
    const o = document.createElement('option');
    o.value = id;
    o.textContent = id;
    sel.append(o);
    sel.value = id;
  }, bogus);
  const reply = await ask(page, 'hello');
  assert.equal(await reply.getAttribute('data-state'), 'error');
  const err = (await reply.getByTestId('message-error').textContent()).trim();
  // The gateway's own error.message is shown, not a generic text.
  const direct = await page.evaluate(async (id) => {
    const r = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: id, messages: [{ role: 'user', content: 'hello' }], stream: true }),
    });
    return { status: r.status, body: await r.json() };
  }, bogus);
  assert.ok(direct.status >= 400, `unknown model is rejected (HTTP ${direct.status})`);
  assert.ok(direct.body.error && direct.body.error.message, 'OpenAI-shaped error body');
  assert.ok(err.includes(direct.body.error.message), `"${err}" shows "${direct.body.error.message}"`);
  t.diagnostic(`shown: ${err}`);
  // The UI is usable again afterwards.
  await page.getByTestId('send-button').waitFor({ state: 'visible' });
  assert.equal(await page.getByTestId('send-button').isEnabled(), true);
  watch.assertClean();
  await page.close();
});

test('with auth on, the key field sends the key (kept in this tab only)', async (t) => {
  if (process.env.OPTIROUTE_URL) {
    t.skip('needs a gateway of its own (unset OPTIROUTE_URL)');
    return;
  }
  const master = 'sk-e2e-master-0123456789abcdef0123';
  // Its own gateway, with auth on (a master key) and its key store in a scratch directory.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'optiroute-e2e-auth-'));
  const g = await spawnGateway({ OPTIROUTE_MASTER_KEY: master }, dir);
  try {
    const page = await newPage({ width: 1280, height: 800 });
    const watch = watchPage(page);
    // Chromium logs every 4xx fetch as a console error; the 401s before the key is set are deliberate.
    watch.allow(/Failed to load resource: the server responded with a status of 401/);
    const res = await page.goto(g.url + '/', { waitUntil: 'load' });
    assert.ok(res && res.ok(), 'the page itself needs no key');
    await page.waitForSelector('[data-testid="stats-status"][data-updated]');

    // Without a key the gateway refuses, and the page says why, in place.
    const refused = await ask(page, 'hello without a key');
    assert.equal(await refused.getAttribute('data-state'), 'error');
    const err = (await refused.getByTestId('message-error').textContent()).trim();
    assert.ok(/API key/i.test(err), `the gateway's reason is shown: "${err}"`);
    assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), 'api-key',
      'the key field has the focus after a 401');

    // With the key: the model list loads and a chat is answered.
    const input = page.getByTestId('api-key-input');
    await input.fill(master);
    await input.dispatchEvent('change');
    await page.waitForSelector('[data-testid="model-select"][data-loaded="true"]');
    const answered = await ask(page, 'hello with a key');
    assert.equal(await answered.getAttribute('data-state'), 'done');
    assert.ok((await answered.getByTestId('message-content').textContent()).trim().length > 0);

    // The key lives in this tab's sessionStorage, never in localStorage.
    const stored = await page.evaluate(() => ({
      session: sessionStorage.getItem('optiroute.apiKey'),
      local: Object.keys(localStorage).map((k) => localStorage.getItem(k)).join(' '),
    }));
    assert.equal(stored.session, master);
    assert.ok(!stored.local.includes(master), 'the key is not in localStorage');
    // A reload keeps it for this tab.
    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector('[data-testid="model-select"][data-loaded="true"]');
    assert.equal(await page.getByTestId('api-key-input').inputValue(), master);
    watch.assertClean();
    await page.close();
  } finally {
    await killGateway(g.child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('with protect_metrics on, the live panel says the stats need a key, then turns live', async (t) => {
  if (process.env.OPTIROUTE_URL) {
    t.skip('needs a gateway of its own (unset OPTIROUTE_URL)');
    return;
  }
  const master = 'sk-e2e-master-0123456789abcdef0123';
  // `[auth] protect_metrics` has no environment override: a config file (demo-like simulated
  // deployments) turns it on; the master key still comes from OPTIROUTE_MASTER_KEY.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'optiroute-e2e-metrics-'));
  const config = path.join(dir, 'optiroute.toml');
  fs.writeFileSync(config, [
    '[auth]',
    'protect_metrics = true',
    '',
    '[[providers]]',
    'name = "sim-local"',
    'kind = "simulated"',
    '[providers.simulated]',
    'latency_ms = 5',
    'tokens_per_s = 2000.0',
    '',
    '[[deployments]]',
    'name = "local"',
    'provider = "sim-local"',
    'model = "sim-local-8b"',
    'tier = "local"',
    '',
  ].join('\n'));
  const g = await spawnGateway({ OPTIROUTE_MASTER_KEY: master, OPTIROUTE_CONFIG: config }, dir);
  const status = '[data-testid="stats-status"]';
  const waitStatus = (page, state, re) => page.waitForFunction(([sel, st, src]) => {
    const el = document.querySelector(sel);
    return el && el.dataset.state === st && new RegExp(src, 'i').test(el.textContent);
  }, [status, state, re.source]);
  try {
    // A virtual key: chat works with it, the stats do not (403 master_key_required).
    const created = await fetch(g.url + '/admin/keys', {
      method: 'POST',
      headers: { authorization: 'Bearer ' + master, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'e2e-virtual' }),
    });
    assert.equal(created.status, 201, `POST /admin/keys answered ${created.status}`);
    const virtualKey = (await created.json()).key;
    assert.ok(virtualKey, 'the new key is returned');

    const page = await newPage({ width: 1280, height: 800 });
    const watch = watchPage(page);
    // Deliberate refusals: the browser logs each 4xx fetch, and /api/stats answers 401, then 403.
    watch.allow(/Failed to load resource: the server responded with a status of 40[13]/);
    watch.allow(/^HTTP 40[13] for \S+\/api\/stats$/);
    const res = await page.goto(g.url + '/', { waitUntil: 'load' });
    assert.ok(res && res.ok(), 'the page itself needs no key');

    // No key: the gateway is up, so the panel says a key is needed, not "offline".
    await waitStatus(page, 'warn', /need.*API key/);
    const noKey = await page.locator(status).evaluate((el) => ({
      text: el.textContent, cls: el.className, updated: el.dataset.updated,
      role: el.getAttribute('role'), dot: getComputedStyle(el, '::before').backgroundColor,
    }));
    assert.doesNotMatch(noKey.text, /offline/i);
    assert.match(noKey.cls, /\bstatus-warn\b/);
    assert.equal(noKey.role, 'status', 'still announced as a status');
    assert.equal(noKey.dot, 'rgb(245, 184, 75)', 'the dot has the warning colour');
    assert.equal(noKey.updated, undefined, 'no stats were shown');

    const input = page.getByTestId('api-key-input');
    // A virtual key: chat is answered, the stats need the master key.
    await input.fill(virtualKey);
    await input.dispatchEvent('change');
    await page.waitForSelector('[data-testid="model-select"][data-loaded="true"]');
    await waitStatus(page, 'warn', /master key/);
    const answered = await ask(page, 'hello with a virtual key');
    assert.equal(await answered.getAttribute('data-state'), 'done');
    assert.match(await page.locator(status).textContent(), /master key/i, 'still needs the master key');

    // The master key: the panel recovers by itself.
    await input.fill(master);
    await input.dispatchEvent('change');
    await waitStatus(page, 'ok', /^live/);
    await page.waitForSelector(`${status}[data-updated]`);
    assert.equal(await page.locator(status).getAttribute('title'), null, 'no leftover explanation');

    // "offline" is kept for a gateway that cannot be reached.
    watch.allow(/Failed to load resource: net::ERR_CONNECTION_REFUSED/);
    await killGateway(g.child);
    await waitStatus(page, 'bad', /^offline$/);
    watch.assertClean();
    await page.close();
  } finally {
    await killGateway(g.child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an error event in the middle of a stream is shown under the partial reply', async () => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  await openApp(page);
  // The gateway reports an upstream failure after the first byte as an SSE `data: {"error": ...}` event.
  // Script that one answer in the browser; everything else still goes to the real gateway.
  const chunk = (content) => `data: ${JSON.stringify({
    id: 'c1', object: 'chat.completion.chunk', created: 0, model: 'm',
    choices: [{ index: 0, delta: { content }, finish_reason: null }],
  })}\n\n`;
  await page.route('**/v1/chat/completions', (route) => route.fulfill({
    status: 200,
    headers: { 'content-type': 'text/event-stream', 'x-optiroute-cache': 'miss' },
    body: chunk('Partial **answer**') + chunk(' before') +
      `data: ${JSON.stringify({ error: { message: 'upstream connection reset', type: 'upstream_error', param: null, code: null } })}\n\n`,
  }));
  const reply = await ask(page, 'this one fails half way');
  assert.equal(await reply.getAttribute('data-state'), 'error');
  assert.match(await reply.getByTestId('message-content').innerHTML(), /Partial <strong>answer<\/strong> before/);
  assert.match(await reply.getByTestId('message-error').textContent(), /upstream connection reset/);
  await page.unroute('**/v1/chat/completions');
  watch.assertClean();
  await page.close();
});

test('stop button cancels a streaming reply', async (t) => {
  const page = await newPage({ width: 1280, height: 800 });
  const watch = watchPage(page);
  await openApp(page);
  // Press Stop as soon as the request is on its way (the button replaces Send while busy).
  const input = page.getByTestId('prompt-input');
  await input.fill(`Write a long story about routers and caches. [e2e ${Math.random().toString(36).slice(2)}]`);
  await input.press('Enter');
  const stopBtn = page.getByTestId('stop-button');
  await stopBtn.waitFor({ state: 'visible' });
  const reply = page.locator('[data-testid="message"][data-role="assistant"]').last();
  try {
    await stopBtn.click({ timeout: 5_000 });
  } catch (e) {
    // The reply can finish between the button showing and the click (a loaded machine): then the
    // button is gone for good, which is only fine if the reply completed.
    if ((await reply.getAttribute('data-state')) !== 'done') throw e;
  }
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('[data-testid="message"][data-role="assistant"]')].pop();
    return m && ['done', 'stopped', 'error'].includes(m.dataset.state);
  });
  const state = await reply.getAttribute('data-state');
  // A very fast gateway may finish before the click lands; anything but an error is fine then.
  assert.ok(state === 'stopped' || state === 'done', `state after Stop: ${state}`);
  t.diagnostic(`state after Stop: ${state}`);
  if (state === 'stopped') {
    assert.equal(await reply.getByTestId('meta-stopped').count(), 1, 'stopped badge shown');
  }
  await page.getByTestId('send-button').waitFor({ state: 'visible' });
  assert.equal(await stopBtn.isHidden(), true);
  watch.assertClean();
  await page.close();
});

test('phone width: no horizontal overflow, screenshot', async () => {
  const page = await newPage({ width: 390, height: 844 });
  const watch = watchPage(page);
  await openApp(page);
  const reply = await ask(page, `Give me a short list of three tips for fast APIs. [e2e ${Math.random().toString(36).slice(2)}]`);
  assert.equal(await reply.getAttribute('data-state'), 'done');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone viewport`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'ui-phone.png') });
  await page.screenshot({ path: path.join(ARTIFACTS, 'ui-phone-full.png'), fullPage: true });
  watch.assertClean();
  await page.close();
});
