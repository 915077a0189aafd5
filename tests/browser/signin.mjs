// Drives headless Chromium through kubegate's sign-in page, for tests/tests/signin_page.rs.
//
// Usage: node signin.mjs START_URL OUT_DIR USER PASSWORD
//
// Opens START_URL (the gateway's /kubegate/login), signs USER in on the test provider's
// login page, waits for the gateway's page, downloads the kubeconfig from its link, and
// writes screenshots of both pages into OUT_DIR. Prints one JSON line on stdout with what
// the page shows; everything else goes to stderr. Exits non-zero on any failure.
//
// Chromium comes from Debian's `chromium` package (CHROMIUM overrides the path). The
// gateway's certificate is a test CA's, hence --ignore-certificate-errors.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import puppeteer from 'puppeteer-core';

const [startUrl, outDir, user, password] = process.argv.slice(2);
if (!password) {
  console.error('usage: node signin.mjs START_URL OUT_DIR USER PASSWORD');
  process.exit(2);
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-dev-shm-usage'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  const violations = [];
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); });

  await page.goto(startUrl, { waitUntil: 'load' });
  await page.waitForSelector('input[name=login]');
  const providerShot = join(outDir, '1-provider-login.png');
  await page.screenshot({ path: providerShot, fullPage: true });
  await page.type('input[name=login]', user);
  await page.type('input[name=password]', password);
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#submit')]);
  await page.waitForSelector('#kubeconfig');
  const gatewayShot = join(outDir, '2-gateway-page.png');
  await page.screenshot({ path: gatewayShot, fullPage: true });

  const shown = await page.evaluate(() => ({
    title: document.title,
    username: document.querySelector('#username')?.textContent,
    groups: [...document.querySelectorAll('#groups .group')].map((g) => g.textContent),
    rules: [...document.querySelectorAll('#rules > li')].map((r) => r.textContent),
    kubeconfig: document.querySelector('#kubeconfig')?.textContent,
    text: document.body.innerText,
    // The stylesheet loaded (style-src 'self'): the body has its background.
    background: getComputedStyle(document.body).backgroundColor,
    scripts: document.scripts.length,
  }));

  // The download link, as a person clicks it.
  const cdp = await page.createCDPSession();
  await cdp.send('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: outDir });
  await page.click('a[download]');
  let downloaded = null;
  for (let i = 0; i < 100 && !downloaded; i += 1) {
    const file = readdirSync(outDir).find((f) => f.endsWith('.yaml'));
    if (file && existsSync(join(outDir, file))) downloaded = join(outDir, file);
    else await new Promise((r) => setTimeout(r, 100));
  }
  if (!downloaded) throw new Error('the kubeconfig download did not arrive');
  process.stdout.write(`${JSON.stringify({
    ...shown,
    url: page.url(),
    downloaded,
    download: readFileSync(downloaded, 'utf8'),
    screenshots: [providerShot, gatewayShot],
    violations,
  })}\n`);
} finally {
  await browser.close();
}
