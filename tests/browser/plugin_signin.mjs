#!/usr/bin/env node
// Headless Chromium as the credential plugin's browser, for tests/tests/credential_plugin.rs:
// `kubegate get-token --browser-command plugin_signin.mjs` (or $BROWSER) runs it with the
// URL to open as its one argument (gateway/src/login/browser.rs), as a desktop would open a
// browser. It then does what a person does on the test provider's pages:
//
//   authorization URL   sign in on the login page; the provider redirects to the plugin's
//                       loopback callback, whose page must say it received the sign-in;
//                       or, for the keyboard flow (redirect urn:ietf:wg:oauth:2.0:oob),
//                       the provider shows the code (#code), which goes to
//                       KUBEGATE_TEST_CODE_FILE for the test to type at the terminal
//   verification URI    the device flow: open the plain verification URI, type the user code
//   (/device?user_code) from the URL, confirm it, sign in, wait for "Sign-in Success"
//
//   KUBEGATE_TEST_USER, KUBEGATE_TEST_PASSWORD   who signs in (alice / alice-password)
//   KUBEGATE_TEST_SHOTS        a directory for screenshots of every page (test artifacts)
//   KUBEGATE_TEST_BROWSER_LOG  a file that gets one line per run (the URL opened)
//   KUBEGATE_TEST_CALLBACK_LOG a file that gets the callback URL each sign-in reached
//   KUBEGATE_TEST_BROWSER_MODE normal (default) | replay-code: no sign-in; open this
//                              sign-in's callback with its state but the code of the
//                              last callback in KUBEGATE_TEST_CALLBACK_LOG (a replayed code)
//   CHROMIUM                   the browser (default /usr/bin/chromium, Debian's package)
//
// Only 127.0.0.1 is reachable from the page (the provider's pages import a web font; a
// test does not fetch from the internet). Exit 0 when the flow ended where it should;
// non-zero with the reason on stderr otherwise. Nothing goes to stdout.

import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import puppeteer from 'puppeteer-core';

console.log = console.error;
// Its stderr is kubectl's, a terminal under `script`, gone once kubectl exits (which may be
// before the last screenshot): a write there must not end the run.
process.stderr.on('error', () => {});
const start = process.argv[2];
const user = process.env.KUBEGATE_TEST_USER ?? 'alice';
const password = process.env.KUBEGATE_TEST_PASSWORD ?? `${user}-password`;
const mode = process.env.KUBEGATE_TEST_BROWSER_MODE ?? 'normal';
const shots = process.env.KUBEGATE_TEST_SHOTS;
if (!start) {
  console.error('usage: plugin_signin.mjs URL');
  process.exit(2);
}
if (process.env.KUBEGATE_TEST_BROWSER_LOG) {
  appendFileSync(process.env.KUBEGATE_TEST_BROWSER_LOG, `${start}\n`);
}
if (shots) mkdirSync(shots, { recursive: true });
const run = `${Date.now()}-${process.pid}`;
let shot = 0;

const args = ['--headless=new', '--disable-dev-shm-usage', '--disable-gpu'];
// Chromium's sandbox cannot start as root (the tests run as root in CI containers).
if (process.getuid?.() === 0) args.push('--no-sandbox');
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args,
});

async function screenshot(page, name) {
  if (!shots) return;
  shot += 1;
  const file = join(shots, `${run}-${shot}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.error(`plugin_signin.mjs: screenshot ${file}`);
}

async function signIn(page) {
  await page.waitForSelector('input[name=login]');
  await screenshot(page, 'provider-login');
  await page.type('input[name=login]', user);
  await page.type('input[name=password]', password);
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('#submit')]);
}

async function authorizationCode(page) {
  const url = new URL(start);
  const redirect = url.searchParams.get('redirect_uri');
  if (mode === 'replay-code') {
    const log = readFileSync(process.env.KUBEGATE_TEST_CALLBACK_LOG, 'utf8').trim().split('\n');
    const old = new URL(log[log.length - 1]);
    const replay = new URL(redirect);
    replay.searchParams.set('code', old.searchParams.get('code'));
    replay.searchParams.set('state', url.searchParams.get('state'));
    replay.searchParams.set('iss', old.searchParams.get('iss'));
    await page.goto(replay.href, { waitUntil: 'domcontentloaded' });
    await screenshot(page, 'replayed-callback');
    return;
  }
  await page.goto(start, { waitUntil: 'domcontentloaded' });
  await signIn(page);
  if (await page.$('#code')) {
    // The keyboard flow: a person reads the code off the page.
    await screenshot(page, 'provider-code');
    const code = await page.$eval('#code', (e) => e.textContent.trim());
    writeFileSync(process.env.KUBEGATE_TEST_CODE_FILE, `${code}\n`);
    return;
  }
  const reached = page.url();
  if (!reached.startsWith(`${redirect}?`)) {
    const text = await page.evaluate(() => document.body.innerText);
    throw new Error(`the sign-in ended at ${reached}, not the callback: ${text.slice(0, 500)}`);
  }
  await screenshot(page, 'plugin-callback');
  const text = await page.evaluate(() => document.body.innerText);
  if (process.env.KUBEGATE_TEST_CALLBACK_LOG) {
    appendFileSync(process.env.KUBEGATE_TEST_CALLBACK_LOG, `${reached}\n`);
  }
  if (!/kubegate received the sign-in/.test(text)) throw new Error(`the callback page says: ${text}`);
}

async function deviceCode(page) {
  const url = new URL(start);
  const userCode = url.searchParams.get('user_code');
  if (!userCode) throw new Error(`no user_code in ${start}`);
  // As a person does on another machine: the plain verification URI, the code typed in.
  await page.goto(`${url.origin}${url.pathname}`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('input[name=user_code]');
  await page.type('input[name=user_code]', userCode);
  await screenshot(page, 'provider-device-code');
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button[form="op.deviceInputForm"]')]);
  const confirm = 'button[form="op.deviceConfirmForm"]:not([name=abort])';
  await page.waitForSelector(confirm);
  const shown = await page.evaluate(() => document.querySelector('code')?.textContent);
  if (shown?.replace(/-/g, '') !== userCode.replace(/-/g, '')) {
    throw new Error(`the confirmation page shows ${shown}, not ${userCode}`);
  }
  await screenshot(page, 'provider-device-confirm');
  await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click(confirm)]);
  await signIn(page);
  await page.waitForFunction(() => /Sign-in Success/.test(document.body.innerText));
  await screenshot(page, 'provider-device-success');
}

let failed = false;
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  await page.setRequestInterception(true);
  page.on('request', (request) => {
    const host = URL.parse(request.url())?.hostname;
    if (host === '127.0.0.1') request.continue();
    else request.abort();
  });
  if (new URL(start).pathname.endsWith('/device')) await deviceCode(page);
  else await authorizationCode(page);
} catch (err) {
  console.error(`plugin_signin.mjs: ${err.stack ?? err}`);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
