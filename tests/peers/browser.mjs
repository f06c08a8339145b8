// Drives Debian's Chromium (/usr/bin/chromium) with playwright-core through a consent flow.
//
//   node tests/peers/browser.mjs '<json>'
//   node tests/peers/browser.mjs <start_url> <final_url_pattern>
//
// JSON keys: start_url, final_url_pattern (a JavaScript regular expression matched against the page
// URL), host_resolver_rules (e.g. "MAP *.localhost 127.0.0.1"), timeout_ms (30000), click_selector
// ("[data-peer-continue]": the button on the test provider's login and consent pages), screenshot
// (a PNG path: the final page, whole), headers (extra request headers, e.g. a function key).
//
// Opens start_url in a fresh profile, clicks the click_selector button whenever a page shows one, and
// once the URL matches final_url_pattern and the page has loaded prints one JSON line:
//   {"url", "status", "text", "cookies": [...], "navigations": [{"method", "url", "status"}], "elapsed_ms"}
// On timeout it prints {"error", "url", "text", "navigations"} and exits 1.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const input = process.argv[2]?.startsWith('{')
  ? JSON.parse(process.argv[2])
  : { start_url: process.argv[2], final_url_pattern: process.argv[3] };
if (!input.start_url || !input.final_url_pattern) {
  console.error('usage: node tests/peers/browser.mjs <start_url> <final_url_pattern>');
  process.exit(2);
}
const finalUrl = new RegExp(input.final_url_pattern);
const timeoutMs = input.timeout_ms ?? 30000;
const clickSelector = input.click_selector ?? '[data-peer-continue]';
const started = Date.now();

const args = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
];
if (input.host_resolver_rules) args.push(`--host-resolver-rules=${input.host_resolver_rules}`);

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'peer-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args,
});
let code = 0;
try {
  const page = context.pages()[0] ?? await context.newPage();
  const navigations = [];
  const consoleMessages = [];
  page.on('console', (message) => consoleMessages.push(`${message.type()}: ${message.text()}`));
  if (input.headers) await page.setExtraHTTPHeaders(input.headers);
  let last = null;
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      last = { method: request.method(), url: response.url(), status: response.status() };
      navigations.push(last);
    }
  });
  const text = async () => page.evaluate(() => document.body?.innerText ?? '').catch(() => '');

  await page.goto(input.start_url, { waitUntil: 'commit', timeout: timeoutMs });
  let done = false;
  while (Date.now() - started < timeoutMs) {
    if (finalUrl.test(page.url())) {
      await page.waitForLoadState('load', { timeout: Math.max(1, timeoutMs - (Date.now() - started)) });
      if (finalUrl.test(page.url())) {
        done = true;
        break;
      }
    }
    const button = page.locator(clickSelector);
    if (await button.count().catch(() => 0)) {
      await button.first().click({ timeout: 5000 }).catch(() => {});
    }
    await page.waitForTimeout(50);
  }
  if (done) {
    if (input.screenshot) await page.screenshot({ path: input.screenshot, fullPage: true });
    console.log(JSON.stringify({
      console: consoleMessages,
      stylesheets: await page.evaluate(() => document.styleSheets.length),
      meters: await page.evaluate(() => [...document.querySelectorAll('meter')].map((m) => ({ value: m.value, max: m.max }))),
      url: page.url(),
      status: last?.status ?? null,
      text: await text(),
      cookies: await context.cookies(),
      navigations,
      elapsed_ms: Date.now() - started,
    }));
  } else {
    console.log(JSON.stringify({
      error: `timed out after ${timeoutMs} ms waiting for ${input.final_url_pattern}`,
      url: page.url(),
      text: await text(),
      navigations,
    }));
    code = 1;
  }
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
