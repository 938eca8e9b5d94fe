#!/usr/bin/env node
// End-to-end check of the viewer + extension with headless Chromium (playwright-core).
//   node ohif-extension/tests/e2e.mjs --url http://127.0.0.1:3000 --study <StudyInstanceUID> \
//        [--screenshots DIR] [--timeout 120] [--viewer-user U --viewer-password-file F]
//        [--no-score-ok]   (accept the QIDO fallback "AI report" in the list when the node API is absent)
//        [--expect-load-failure]  (a study the viewer cannot fully load, e.g. a SEG the PACS cannot
//                                  serve: the panel must say what did not load instead of waiting
//                                  forever, and no heat map may be drawn over an image that failed)
//        [--judge agree|false_alarm|missed_finding [--comment TEXT] [--reader NAME]]
// With --judge it then clicks that judgement button in the panel (typing the comment, and the
// reader's name when the viewer has no login), waits until the panel says it was saved, saves
// 03_feedback.png once the panel says the PACS has it, and prints "E2E FEEDBACK {json}" with
// the stored version and the seconds from the click to "Saved" (stored on the node) and to
// "stored in the PACS" (as the panel learns it, polling every 0.25 s).
// Exit 0 and "E2E PASS ..." when: the study list shows the study's AI score (flagged studies
// first), the viewer's AI panel shows score + flag, a segmentation is loaded into the viewport,
// the heat map is drawn when the study has a fractional SEG, and no error about display sets
// OHIF cannot show appeared. Otherwise exit 1 with "E2E FAIL: <why>". Waits on UI state only.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { clock, openPage } from './browser.mjs';

const { values: o } = parseArgs({
  options: {
    url: { type: 'string' },
    study: { type: 'string' },
    screenshots: { type: 'string' },
    timeout: { type: 'string', default: '120' },
    'viewer-user': { type: 'string' },
    'viewer-password-file': { type: 'string' },
    'no-score-ok': { type: 'boolean', default: false },
    'expect-load-failure': { type: 'boolean', default: false },
    judge: { type: 'string' },
    comment: { type: 'string', default: '' },
    reader: { type: 'string', default: 'Dr E2E Reader' },
    chromium: { type: 'string', default: process.env.CHROMIUM_PATH || '/usr/bin/chromium' },
  },
});
if (!o.url || !o.study) {
  console.error('usage: e2e.mjs --url http://127.0.0.1:PORT --study <StudyInstanceUID> [--screenshots DIR]');
  process.exit(2);
}
const base = o.url.replace(/\/$/, '');
const timeout = Number(o.timeout) * 1000;
const { secs, log } = clock('e2e');
if (o.screenshots) mkdirSync(o.screenshots, { recursive: true });

const { browser, page, problems } = await openPage({
  executablePath: o.chromium,
  timeout,
  httpCredentials: o['viewer-user']
    ? { username: o['viewer-user'], password: readFileSync(o['viewer-password-file'], 'utf8').replace(/\r?\n$/, '') }
    : undefined,
});
page.on('console', (msg) => {
  const t = msg.text();
  if (/Fractional segmentations are not yet supported|ReferencedSOPSequence|ai-anomaly\]/.test(t) && msg.type() === 'error') {
    problems.push(`console: ${t.slice(0, 300)}`);
  }
});

async function shot(name) {
  if (o.screenshots) await page.screenshot({ path: join(o.screenshots, name) });
}

function fail(msg) {
  throw new Error(msg);
}

let summary = {};
try {
  // 1. Study list: AI column with the study's score, flagged studies first.
  await page.goto(`${base}/`);
  const cell = page.locator(`[data-testid="ai-anomaly-cell"][data-study="${o.study}"]`);
  await cell.waitFor({ state: 'attached' });
  await page.waitForFunction(
    (uid) => document.querySelector(`[data-testid="ai-anomaly-cell"][data-study="${uid}"]`)?.textContent.trim(),
    o.study,
  );
  const listText = (await cell.textContent()).trim();
  const listLevel = await cell.getAttribute('data-level');
  log(`study list: AI column "${listText}" (${listLevel})`);
  const listScore = /(-?\d+\.\d+)/.exec(listText)?.[1];
  if (!listScore && !(o['no-score-ok'] && listLevel === 'done')) fail(`study list shows no score for the study: "${listText}"`);
  const levels = await page.$$eval('[data-testid="ai-anomaly-cell"]', (els) => els.map((e) => e.dataset.level));
  const firstNotFlagged = levels.findIndex((l) => l !== 'abnormal');
  if (firstNotFlagged >= 0 && levels.slice(firstNotFlagged).includes('abnormal')) {
    fail(`flagged studies are not first in the list: ${levels.join(',')}`);
  }
  log(`study list order: ${levels.join(', ')}`);
  await shot('01_study_list.png');

  // 2. Viewer: panel with score + flag.
  await page.goto(`${base}/viewer?StudyInstanceUIDs=${o.study}`);
  const result = page.locator('[data-testid="ai-result"]');
  await page.waitForFunction(() =>
    ['ok', 'none', 'error'].includes(document.querySelector('[data-testid="ai-result"]')?.dataset.status),
  );
  const status = await result.getAttribute('data-status');
  if (status !== 'ok') fail(`AI panel: ${(await result.textContent()).trim()}`);
  const flag = page.locator('[data-testid="ai-flag"]').first();
  const flagStatus = await flag.getAttribute('data-status');
  const flagText = (await flag.textContent()).trim();
  const panelScore =
    flagStatus === 'not_analysed' ? undefined : (await page.locator('[data-testid="ai-score"]').first().textContent()).trim();
  log(`panel: flag "${flagText}" (${flagStatus}), score ${panelScore}`);
  if (!['abnormal', 'normal', 'not_analysed'].includes(flagStatus)) fail(`panel shows no flag (${flagStatus})`);
  if (flagStatus !== 'not_analysed' && !/^-?\d+\.\d\d$/.test(panelScore || '')) fail(`panel shows no score: "${panelScore}"`);
  if (listScore && panelScore && Number(listScore).toFixed(2) !== panelScore) {
    fail(`study list score ${listScore} != panel score ${panelScore}`);
  }
  if ((listLevel === 'abnormal') !== (flagStatus === 'abnormal') && listLevel !== 'done') {
    fail(`study list flag (${listLevel}) != panel flag (${flagStatus})`);
  }

  // 3. Overlay: OHIF labelmap from the binary SEG, and our heat map from the fractional SEG.
  let segCount = 0;
  let heat = 'n/a';
  if (o['expect-load-failure']) {
    await page.waitForFunction(() =>
      /region error|did not load/.test(document.querySelector('[data-testid="ai-map-status"]')?.textContent || ''),
    );
    const overFailed = await page.locator('canvas.ai-anomaly-heatmap[data-not-loaded="true"][data-drawn="true"]').count();
    if (overFailed) fail('a heat map is drawn over an image that did not load');
    heat = (await page.locator('[data-testid="ai-map-status"]').textContent()).trim();
    log(`map status: ${heat}`);
  } else if (flagStatus !== 'not_analysed') {
    await page.waitForFunction(() => window.services?.segmentationService?.getSegmentations?.()?.length > 0);
    segCount = await page.evaluate(() => window.services.segmentationService.getSegmentations().length);
    log(`segmentations loaded: ${segCount}`);
    await page.waitForFunction(() => {
      const s = document.querySelector('[data-testid="ai-map-status"]')?.textContent || '';
      return /heat map loaded|no heat map|heat map error/.test(s);
    });
    const mapStatus = await page.locator('[data-testid="ai-map-status"]').textContent();
    if (/heat map error/.test(mapStatus)) fail(`heat map: ${mapStatus}`);
    if (/heat map loaded/.test(mapStatus)) {
      await page.waitForSelector('canvas.ai-anomaly-heatmap[data-drawn="true"]', { state: 'attached' });
      heat = 'drawn';
    } else heat = 'none in study';
    log(`heat map: ${heat}`);
  }
  // Our SR and fractional SEG must not be offered as thumbnails (OHIF would error on them).
  const offending = await page.locator('text=/Fractional segmentations are not yet supported/').count();
  if (offending) fail('OHIF shows the fractional-SEG error');
  await shot('02_viewer_panel_overlay.png');
  if (problems.length) fail(problems.join('\n'));
  summary = { listText, flagStatus, panelScore, segCount, heat };

  // 4. The reader's judgement: button + comment, saved by the node (optional).
  if (o.judge) {
    const box = page.locator('[data-testid="ai-feedback"]').first();
    await box.waitFor();
    await page.waitForFunction(
      () => !/Loading/.test(document.querySelector('[data-testid="ai-feedback-current"]')?.textContent || 'Loading'),
    );
    const readerInput = page.locator('[data-testid="ai-feedback-reader"]').first();
    if (await readerInput.isVisible()) await readerInput.fill(o.reader);
    if (o.comment) await page.locator('[data-testid="ai-feedback-comment"]').first().fill(o.comment);
    const button = page.locator(`[data-testid="ai-feedback-${o.judge}"]`).first();
    if (!(await button.count())) fail(`no "${o.judge}" button for a ${flagStatus} study`);
    const clicked = Date.now();
    await button.click();
    await page.waitForFunction(() => {
      const t = document.querySelector('[data-testid="ai-feedback-status"]')?.textContent || '';
      return /^Saved|^Not saved/.test(t);
    });
    const saveSeconds = (Date.now() - clicked) / 1000;
    const statusText = (await page.locator('[data-testid="ai-feedback-status"]').first().textContent()).trim();
    if (!/^Saved/.test(statusText)) fail(`judgement: ${statusText}`);
    const version = Number(await page.locator('[data-testid="ai-feedback-status"]').first().getAttribute('data-version'));
    log(`judgement: ${statusText} (${saveSeconds.toFixed(2)} s from the click)`);
    await page.waitForSelector('[data-testid="ai-feedback-current"][data-delivered="true"]', { state: 'attached' });
    const pacsSeconds = (Date.now() - clicked) / 1000;
    log(`judgement in the PACS: ${pacsSeconds.toFixed(2)} s from the click (as the panel learns it, polling every 0.25 s)`);
    await box.scrollIntoViewIfNeeded();
    await shot('03_feedback.png');
    if (problems.length) fail(problems.join('\n'));
    summary.feedback = { judgement: o.judge, version, saveSeconds, pacsSeconds };
    console.log(`E2E FEEDBACK ${JSON.stringify(summary.feedback)}`);
  }
  console.log(`E2E PASS in ${secs()} s: ${JSON.stringify(summary)}`);
  await browser.close();
  process.exit(0);
} catch (err) {
  try {
    await shot('failure.png');
  } catch {
    // no page to capture
  }
  console.error(`E2E FAIL after ${secs()} s: ${err.message}`);
  if (problems.length) console.error(problems.join('\n'));
  await browser.close();
  process.exit(1);
}
