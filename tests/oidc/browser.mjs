#!/usr/bin/env node
// A scripted "browser" for the credential plugin's tests: `--browser-command` (or
// $BROWSER) runs `browser.mjs URL`. It does what a person does: follows redirects with
// the provider's cookies, fills the sign-in form with a username and submits each form
// (login, device code, confirm) until the provider redirects to the plugin's loopback
// callback, which it then opens; or, for the device flow, until the success page.
//
//   KUBEGATE_TEST_USER           the username to sign in as (default alice)
//   KUBEGATE_TEST_BROWSER_MODE   normal (default) | no-state | wrong-state: call the
//                                callback directly, without or with a wrong state
//   KUBEGATE_TEST_BROWSER_LOG    a file that gets one line per run (the URL opened)
//
// Exit 0 when the callback answered 200 or the device sign-in succeeded; 1 otherwise.
// Stdout stays empty (it is the plugin's stderr or nothing anyway).

import { appendFileSync } from 'node:fs';

const start = process.argv[2];
const user = process.env.KUBEGATE_TEST_USER ?? 'alice';
const mode = process.env.KUBEGATE_TEST_BROWSER_MODE ?? 'normal';
if (process.env.KUBEGATE_TEST_BROWSER_LOG) {
  appendFileSync(process.env.KUBEGATE_TEST_BROWSER_LOG, `${start}\n`);
}

function fail(message) {
  console.error(`browser.mjs: ${message}`);
  process.exit(1);
}

if (!start) fail('usage: browser.mjs URL');
const origin = new URL(start).origin;

if (mode !== 'normal') {
  const redirect = new URL(start).searchParams.get('redirect_uri');
  if (!redirect) fail('no redirect_uri in the authorization URL');
  const callback = new URL(redirect);
  callback.searchParams.set('code', 'not-a-real-code');
  if (mode === 'wrong-state') callback.searchParams.set('state', 'wrong-state');
  const res = await fetch(callback, { redirect: 'manual' });
  console.error(`browser.mjs: callback answered ${res.status}`);
  process.exit(0);
}

const cookies = new Map();
function remember(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    cookies.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
  }
}
function cookieHeader() {
  return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
}

function decode(s) {
  return s.replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

// The first form of the page: its action and its fields, with the username filled in.
function firstForm(html) {
  const form = html.match(/<form\b([^>]*)>([\s\S]*?)<\/form>/i);
  if (!form) return null;
  const action = form[1].match(/action="([^"]*)"/i)?.[1] ?? '';
  const fields = new URLSearchParams();
  for (const input of form[2].matchAll(/<input\b([^>]*)>/gi)) {
    const name = input[1].match(/name="([^"]*)"/i)?.[1];
    if (!name) continue;
    const value = input[1].match(/value="([^"]*)"/i)?.[1] ?? '';
    fields.set(name, name === 'login' ? user : decode(value));
  }
  return { action: decode(action), fields };
}

let url = new URL(start);
let method = 'GET';
let body;
for (let step = 0; step < 30; step += 1) {
  const res = await fetch(url, {
    method,
    body,
    redirect: 'manual',
    headers: {
      cookie: cookieHeader(),
      ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
    },
  });
  remember(res);
  if (res.status >= 300 && res.status < 400) {
    const next = new URL(res.headers.get('location'), url);
    if (next.origin !== origin) {
      // The provider sends us back to the plugin: open its callback.
      const done = await fetch(next, { redirect: 'manual' });
      const text = await done.text();
      if (done.status !== 200) fail(`the callback answered ${done.status}: ${text}`);
      process.exit(0);
    }
    url = next;
    method = 'GET';
    body = undefined;
    continue;
  }
  const html = await res.text();
  if (/Sign-in Success/.test(html)) process.exit(0);
  if (/class="error"|class="red"/.test(html)) fail(`the provider refused: ${html.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ')}`);
  const form = firstForm(html);
  if (!form) fail(`a page without a form (${res.status}): ${html.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').slice(0, 500)}`);
  url = new URL(form.action, url);
  method = 'POST';
  body = form.fields.toString();
}
fail('too many steps');
