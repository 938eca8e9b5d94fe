#!/usr/bin/env node
// The node's overlay Secondary Capture of a radiograph in the STOCK OHIF 3.13.2 viewer (no
// anomaly extension), headless Chromium.
//   node ohif-extension/tests/e2e_stock_dx.mjs --url http://127.0.0.1:PORT --study <StudyInstanceUID> \
//        [--sc <SOPInstanceUID>] [--source <SOPInstanceUID>] [--screenshot FILE] [--timeout 120]
// Serve the viewer with tests/stock-app-config.js (server/serve.mjs --app-config ...).
// Stock OHIF cannot show a DICOM SEG on a projection radiograph (docs/CONFORMANCE.md), so the
// node also writes a colour Secondary Capture with the map burned in (sc_writer.py: SOP class
// 1.2.840.10008.5.1.4.1.1.7, Modality OT, SeriesNumber 9005, SeriesDescription "RESEARCH USE
// ONLY: AI anomaly overlay (not for clinical use)"). This script opens the study, puts the
// original radiograph (--source, else the DX/CR display set) into the active viewport and counts
// coloured pixels in the rendered canvas (a greyscale radiograph has none), then puts the
// overlay SC (--sc, else the display set with SeriesNumber 9005 / "AI anomaly overlay") there
// and counts again (the burned-in map is saturated colour). Exit 0 with
// "E2E STOCK DX PASS {json}" when the radiograph rendered grey, the SC rendered with colour and
// no page error occurred; else exit 1 with "E2E STOCK DX FAIL: <why>". Waits on viewer state
// and render events only.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';

import { clock, openPage } from './browser.mjs';

const { values: o } = parseArgs({
  options: {
    url: { type: 'string' },
    study: { type: 'string' },
    sc: { type: 'string' },
    source: { type: 'string' },
    screenshot: { type: 'string' },
    timeout: { type: 'string', default: '120' },
    width: { type: 'string', default: '1200' },
    height: { type: 'string', default: '800' },
    chromium: { type: 'string', default: process.env.CHROMIUM_PATH || '/usr/bin/chromium' },
  },
});
if (!o.url || !o.study) {
  console.error('usage: e2e_stock_dx.mjs --url URL --study UID [--sc UID] [--source UID] [--screenshot FILE]');
  process.exit(2);
}
const base = o.url.replace(/\/$/, '');
const timeout = Number(o.timeout) * 1000;
const { secs, log } = clock('e2e-stock-dx');
const SC_CLASS = '1.2.840.10008.5.1.4.1.1.7';
const OVERLAY_SERIES_NUMBER = 9005;

const { browser, page, problems } = await openPage({
  executablePath: o.chromium,
  timeout,
  viewport: { width: Number(o.width), height: Number(o.height) },
});
const consoleErrors = [];
page.on('console', (msg) => {
  if (msg.type() === 'error') consoleErrors.push(msg.text().slice(0, 300));
});

function fail(msg) {
  throw new Error(msg);
}

/** Put one display set into the active viewport; wait until its image is loaded and drawn;
 * count coloured pixels of the viewport's canvas. */
async function showAndCount(displaySetUid, sopUid) {
  const viewportId = await page.evaluate(() => window.services.viewportGridService.getActiveViewportId());
  await page.evaluate(
    ([vp, ds]) => window.services.viewportGridService.setDisplaySetsForViewport({ viewportId: vp, displaySetInstanceUIDs: [ds] }),
    [viewportId, displaySetUid],
  );
  // the cornerstone viewport of that grid viewport shows an image of this SOP instance, loaded
  await page.waitForFunction(
    ([vpId, uid]) => {
      const vp = window.cornerstone?.getEnabledElements?.().map((e) => e.viewport).find((v) => v.id === vpId);
      const imageId = vp?.getCurrentImageId?.();
      return Boolean(imageId && imageId.includes(`/instances/${uid}/`) && vp.getCornerstoneImage?.());
    },
    [viewportId, sopUid],
  );
  return page.evaluate(async (vpId) => {
    const cs = window.cornerstone;
    const vp = cs.getEnabledElements().map((e) => e.viewport).find((v) => v.id === vpId);
    // render once more and wait for that render and the painted frame
    const rendered = new Promise((resolve) =>
      vp.element.addEventListener(cs.Enums.Events.IMAGE_RENDERED, resolve, { once: true }),
    );
    vp.render();
    await rendered;
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    const canvas = vp.canvas;
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let coloured = 0;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) {
      const r = data[i];
      const g = data[i + 1];
      const b = data[i + 2];
      if (Math.max(r, g, b) > 30) lit += 1;
      // grey has r = g = b; the burned-in map is saturated colour
      if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured += 1;
    }
    const image = vp.getCornerstoneImage();
    return {
      viewportId: vpId,
      imageId: vp.getCurrentImageId(),
      color: Boolean(image?.color),
      rows: image?.rows,
      columns: image?.columns,
      canvas: [canvas.width, canvas.height],
      lit,
      coloured,
    };
  }, viewportId);
}

try {
  await page.goto(`${base}/viewer?StudyInstanceUIDs=${o.study}`);
  await page.waitForFunction(() => window.services?.displaySetService?.getActiveDisplaySets?.()?.length > 0);
  // the stock viewer: no anomaly extension registered
  const registered = await page.evaluate(() => window.extensionManager?.registeredExtensionIds ?? []);
  log(`extensions: ${JSON.stringify(registered)}`);
  if (JSON.stringify(registered).includes('ainode')) fail(`the anomaly extension is loaded: ${registered}`);
  // the radiograph and the overlay SC among the display sets
  const describe = () =>
    window.services.displaySetService.getActiveDisplaySets().map((d) => {
      const first = d.instances?.[0] ?? d.instance ?? {};
      return {
        uid: d.displaySetInstanceUID,
        modality: d.Modality,
        sopClass: d.SOPClassUID ?? first.SOPClassUID,
        seriesNumber: Number(d.SeriesNumber ?? first.SeriesNumber),
        description: d.SeriesDescription,
        sops: (d.instances ?? (d.instance ? [d.instance] : [])).map((i) => i.SOPInstanceUID),
        sopClassHandler: d.SOPClassHandlerId,
        unsupported: Boolean(d.unsupported),
      };
    });
  await page.waitForFunction(
    ([sc, n]) =>
      window.services.displaySetService.getActiveDisplaySets().some((d) => {
        const first = d.instances?.[0] ?? {};
        if (sc) return (d.instances ?? []).some((i) => i.SOPInstanceUID === sc);
        return Number(d.SeriesNumber ?? first.SeriesNumber) === n || /AI anomaly overlay/.test(d.SeriesDescription ?? '');
      }),
    [o.sc ?? null, OVERLAY_SERIES_NUMBER],
  );
  const sets = await page.evaluate(describe);
  log(`display sets: ${JSON.stringify(sets)}`);
  const overlays = sets.filter((d) =>
    o.sc ? d.sops.includes(o.sc) : d.seriesNumber === OVERLAY_SERIES_NUMBER || /AI anomaly overlay/.test(d.description ?? ''),
  );
  if (overlays.length !== 1) fail(`expected one overlay SC display set, found ${overlays.length}`);
  const [overlay] = overlays;
  if (overlay.sopClass && overlay.sopClass !== SC_CLASS) fail(`the overlay display set has SOP class ${overlay.sopClass}`);
  if (overlay.unsupported) fail(`stock OHIF marks the overlay display set unsupported: ${JSON.stringify(overlay)}`);
  const sources = sets.filter((d) => (o.source ? d.sops.includes(o.source) : ['DX', 'CR'].includes(d.modality)));
  if (sources.length !== 1) fail(`expected one radiograph display set, found ${sources.length}`);
  const [source] = sources;
  await page.waitForFunction(() => window.cornerstone?.getEnabledElements?.()?.length > 0);

  // the radiograph first: rendered, and grey
  const original = await showAndCount(source.uid, o.source ?? source.sops[0]);
  log(`radiograph: ${JSON.stringify(original)}`);
  const area = original.canvas[0] * original.canvas[1];
  if (original.lit < 0.05 * area) fail(`the radiograph did not render (${original.lit} lit pixels of ${area})`);
  if (original.coloured > 0.001 * area) fail(`the radiograph is not grey: ${original.coloured} coloured pixels`);

  // then the overlay SC: rendered, in colour
  const sc = await showAndCount(overlay.uid, o.sc ?? overlay.sops[0]);
  log(`overlay SC: ${JSON.stringify(sc)}`);
  const scArea = sc.canvas[0] * sc.canvas[1];
  if (sc.lit < 0.05 * scArea) fail(`the overlay SC did not render (${sc.lit} lit pixels of ${scArea})`);
  if (sc.coloured < Math.max(500, 0.002 * scArea)) fail(`the overlay SC shows no map: ${sc.coloured} coloured pixels`);

  // stock OHIF opens its cine player for Modality OT and US (customization autoCineModalities);
  // the SC is OT (highdicom's SCImage), one frame
  const cine = await page.evaluate(() => Boolean(window.services.cineService.getState().isCineEnabled));
  log(`cine player enabled: ${cine}`);
  if (o.screenshot) {
    // the stock viewer's first-visit tour covers the study browser: skip it for the picture
    const skip = page.locator('text=Skip all');
    if (await skip.count()) await skip.first().click();
    if (cine) {
      // closed as its close button does (nothing to play in one frame; it covers the image)
      await page.evaluate((vpId) => {
        const { cineService } = window.services;
        cineService.setCine({ id: vpId, isPlaying: false });
        cineService.setIsCineEnabled(false);
        cineService.setViewportCineClosed?.(vpId);
      }, sc.viewportId);
    }
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    mkdirSync(dirname(o.screenshot), { recursive: true });
    await page.screenshot({ path: o.screenshot });
  }
  if (problems.length) fail(problems.join('\n'));
  if (consoleErrors.length) log(`console errors (not failing): ${JSON.stringify(consoleErrors.slice(0, 10))}`);
  const summary = {
    overlay: { seriesNumber: overlay.seriesNumber, modality: overlay.modality, description: overlay.description },
    radiograph: { modality: source.modality, coloured: original.coloured, lit: original.lit },
    sc: { coloured: sc.coloured, lit: sc.lit, color: sc.color, rows: sc.rows, columns: sc.columns },
    cineOpenedForSc: cine,
    canvas: sc.canvas,
    displaySets: sets.map((d) => `${d.modality}:${d.seriesNumber}:${d.sops.length}`),
  };
  console.log(`E2E STOCK DX PASS in ${secs()} s: ${JSON.stringify(summary)}`);
  await browser.close();
  process.exit(0);
} catch (err) {
  try {
    if (o.screenshot) await page.screenshot({ path: o.screenshot.replace(/\.png$/, '_failure.png') });
  } catch {
    // no page to capture
  }
  console.error(`E2E STOCK DX FAIL after ${secs()} s: ${err.message}`);
  if (problems.length) console.error(problems.join('\n'));
  if (consoleErrors.length) console.error(`console errors: ${JSON.stringify(consoleErrors.slice(0, 20))}`);
  await browser.close();
  process.exit(1);
}
