// Drives the image's headless Chromium with the globally installed playwright-core
// (resolved through NODE_PATH), with no executablePath: Playwright must find the browser
// itself. Prints one JSON line; exits non-zero on any failure.
const { chromium } = require('playwright-core');
const fs = require('node:fs');

const [url, out] = process.argv.slice(2);
(async () => {
  const started = Date.now();
  const browser = await chromium.launch();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    await page.goto(url, { waitUntil: 'load' });
    await page.waitForFunction(() => document.title === 'rendered', null, { timeout: 10_000 });
    const headline = await page.textContent('#headline');
    await page.screenshot({ path: out });
    console.log(JSON.stringify({ browser: browser.version(), headline, bytes: fs.statSync(out).size, ms: Date.now() - started }));
  } finally {
    await browser.close();
  }
})().catch((err) => {
  console.error(`render failed: ${err.stack || err}`);
  process.exit(1);
});
