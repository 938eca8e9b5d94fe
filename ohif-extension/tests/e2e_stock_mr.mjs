#!/usr/bin/env node
// The node's MR results in the STOCK OHIF 3.13.2 viewer (no anomaly extension), headless Chromium.
//   node ohif-extension/tests/e2e_stock_mr.mjs --url http://127.0.0.1:PORT --study <StudyInstanceUID> \
//        --region <SOPInstanceUID,...> --empty <SOPInstanceUID,...> [--screenshot FILE] [--timeout 120]
// Serve the viewer with tests/stock-app-config.js (server/serve.mjs --app-config ...).
// It opens the study, loads the node's binary SEG (the stock way: the SEG display set put into
// the viewport, which OHIF hydrates onto its MR series), then for every slice listed in --region
// (slices where the SEG has region pixels) and --empty (slices where it has none) scrolls the MR
// viewport to that slice and counts coloured pixels in the rendered canvas (the MR is greyscale,
// so any saturated pixel is the overlay). Exit 0 with "E2E STOCK PASS {json}" when the SEG loaded,
// every --region slice shows overlay pixels and every --empty slice shows none; else exit 1 with
// "E2E STOCK FAIL: <why>". Waits on viewer state and render events only.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';

import { clock, openPage } from './browser.mjs';

const { values: o } = parseArgs({
  options: {
    url: { type: 'string' },
    study: { type: 'string' },
    region: { type: 'string', default: '' },
    empty: { type: 'string', default: '' },
    screenshot: { type: 'string' },
    timeout: { type: 'string', default: '120' },
    chromium: { type: 'string', default: process.env.CHROMIUM_PATH || '/usr/bin/chromium' },
  },
});
if (!o.url || !o.study || !o.region) {
  console.error('usage: e2e_stock_mr.mjs --url URL --study UID --region UID,... [--empty UID,...]');
  process.exit(2);
}
const base = o.url.replace(/\/$/, '');
const timeout = Number(o.timeout) * 1000;
const regionUids = o.region.split(',').filter(Boolean);
const emptyUids = o.empty.split(',').filter(Boolean);
const { secs, log } = clock('e2e-stock');

const { browser, page, problems } = await openPage({ executablePath: o.chromium, timeout });

function fail(msg) {
  throw new Error(msg);
}

try {
  await page.goto(`${base}/viewer?StudyInstanceUIDs=${o.study}`);
  // the stock viewer: no anomaly extension registered
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets?.()?.length > 0);
  const registered = await page.evaluate(() => window.extensionManager?.registeredExtensionIds ?? []);
  if (JSON.stringify(registered).includes('ainode')) fail(`the anomaly extension is loaded: ${registered}`);
  // the MR shown, and the node's SEG among the display sets
  await page.waitForFunction(() => {
    const sets = window.services.displaySetService.getActiveDisplaySets();
    return sets.some((d) => d.Modality === 'SEG') && sets.some((d) => d.Modality === 'MR');
  });
  const sets = await page.evaluate(() =>
    window.services.displaySetService.getActiveDisplaySets().map((d) => ({
      uid: d.displaySetInstanceUID,
      modality: d.Modality,
      sopClass: d.SOPClassUID,
      description: d.SeriesDescription,
      instances: d.instances?.length ?? d.numImageFrames,
    })),
  );
  log(`display sets: ${JSON.stringify(sets)}`);
  const segs = sets.filter((d) => d.modality === 'SEG');
  if (segs.length !== 1) fail(`expected one SEG display set for the MR series, found ${segs.length}`);
  await page.waitForFunction(() => window.cornerstone?.getEnabledElements?.()?.length > 0);
  const viewportId = await page.evaluate(() => window.services.viewportGridService.getActiveViewportId());
  await page.evaluate(
    ([vp, seg]) => window.services.viewportGridService.setDisplaySetsForViewport({ viewportId: vp, displaySetInstanceUIDs: [seg] }),
    [viewportId, segs[0].uid],
  );
  await page.waitForFunction(() => window.services.segmentationService.getSegmentations().length > 0);
  const segmentations = await page.evaluate(() =>
    window.services.segmentationService.getSegmentations().map((s) => ({
      id: s.segmentationId,
      label: s.label,
      segments: Object.keys(s.segments || {}).length,
    })),
  );
  log(`segmentations: ${JSON.stringify(segmentations)}`);
  // the viewport now shows the MR stack with the SEG as a labelmap overlay
  await page.waitForFunction(
    () => {
      const vp = window.cornerstone.getEnabledElements().map((e) => e.viewport).find((v) => v.getImageIds?.().length > 1);
      return vp && window.cornerstoneTools?.segmentation?.state?.getSegmentationRepresentations?.(vp.id)?.length > 0;
    },
  );

  /** Scroll the MR viewport to the slice with this SOPInstanceUID; count overlay pixels. */
  async function overlayPixels(sopUid) {
    return page.evaluate(async (uid) => {
      const cs = window.cornerstone;
      const vp = cs.getEnabledElements().map((e) => e.viewport).find((v) => v.getImageIds?.().length > 1);
      const ids = vp.getImageIds();
      const index = ids.findIndex((id) => id.includes(`/instances/${uid}/`));
      if (index < 0) return { index, count: -1 };
      const rendered = new Promise((resolve) =>
        vp.element.addEventListener(cs.Enums.Events.IMAGE_RENDERED, resolve, { once: true }),
      );
      await vp.setImageIdIndex(index);
      await rendered;
      // the labelmap is drawn in the same render pass; wait for the next frame to be painted
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      vp.render();
      await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
      const canvas = vp.canvas;
      const ctx = canvas.getContext('2d');
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let count = 0;
      for (let i = 0; i < data.length; i += 4) {
        const r = data[i];
        const g = data[i + 1];
        const b = data[i + 2];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 40) count += 1;
      }
      return { index, count, current: vp.getCurrentImageIdIndex() };
    }, sopUid);
  }

  const results = { region: {}, empty: {} };
  let best = { count: -1 };
  for (const uid of regionUids) {
    const r = await overlayPixels(uid);
    results.region[uid] = r;
    if (r.count > best.count) best = { ...r, uid };
  }
  for (const uid of emptyUids) results.empty[uid] = await overlayPixels(uid);
  log(`overlay pixels: ${JSON.stringify(results)}`);
  const missing = Object.entries(results.region).filter(([, r]) => r.index < 0).concat(
    Object.entries(results.empty).filter(([, r]) => r.index < 0),
  );
  if (missing.length) fail(`slices not in the viewport's stack: ${missing.map(([u]) => u).join(', ')}`);
  const noOverlay = Object.entries(results.region).filter(([, r]) => r.count <= 0);
  if (noOverlay.length) fail(`no overlay drawn on region slices ${noOverlay.map(([u]) => u).join(', ')}`);
  const spurious = Object.entries(results.empty).filter(([, r]) => r.count > 0);
  if (spurious.length) fail(`overlay drawn on slices without region ${spurious.map(([u]) => u).join(', ')}`);
  if (o.screenshot) {
    // the stock viewer's first-visit tour covers the study browser: skip it for the picture
    const skip = page.locator('text=Skip all');
    if (await skip.count()) await skip.first().click();
    await overlayPixels(best.uid); // the slice with the largest region, for the README
    mkdirSync(dirname(o.screenshot), { recursive: true });
    await page.screenshot({ path: o.screenshot });
  }
  if (problems.length) fail(problems.join('\n'));
  const summary = {
    segDisplaySets: segs.length,
    segmentations: segmentations.length,
    regionSlices: regionUids.length,
    emptySlices: emptyUids.length,
    largest: best,
    displaySets: sets.map((d) => `${d.modality}:${d.instances}`),
  };
  console.log(`E2E STOCK PASS in ${secs()} s: ${JSON.stringify(summary)}`);
  await browser.close();
  process.exit(0);
} catch (err) {
  try {
    if (o.screenshot) await page.screenshot({ path: o.screenshot.replace(/\.png$/, '_failure.png') });
  } catch {
    // no page to capture
  }
  console.error(`E2E STOCK FAIL after ${secs()} s: ${err.message}`);
  if (problems.length) console.error(problems.join('\n'));
  await browser.close();
  process.exit(1);
}
