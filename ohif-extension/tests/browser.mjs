// What the browser scripts (e2e.mjs, e2e_stock_dx.mjs, e2e_stock_mr.mjs) share: a clock for their
// log lines, and one headless Chromium page on the viewer with its page errors collected.
import { chromium } from 'playwright-core';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Seconds since the call, and a logger that prefixes them with `tag`. */
export function clock(tag) {
  const t0 = Date.now();
  const secs = () => ((Date.now() - t0) / 1000).toFixed(1);
  return { secs, log: (msg) => console.log(`[${tag} ${secs()} s] ${msg}`) };
}

/** Launch Chromium (`executablePath`) and open one page; `problems` collects its page errors. */
export async function openPage({ executablePath, timeout, viewport = { width: 1400, height: 900 }, httpCredentials }) {
  const browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS });
  const context = await browser.newContext({ viewport, serviceWorkers: 'block', httpCredentials });
  const page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  return { browser, page, problems };
}
