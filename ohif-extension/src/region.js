// Load the node's region SEG (thresholded region, nested levels; BINARY, or pseudo-binary
// FRACTIONAL for images whose width is not a multiple of 8) as OHIF's own labelmap overlay,
// automatically when the study opens: put the SEG display set into the viewport that shows its
// source series (with appConfig.disableConfirmationPrompts OHIF hydrates it without asking).
import { chooseSeg, describeSeg } from './seg.js';
import { store } from './store.js';

let subs = [];
const hydrated = new Set();

/** Stop listening (mode exit). */
export function stopRegion() {
  subs.forEach((s) => s?.unsubscribe?.());
  subs = [];
  hydrated.clear();
}

/**
 * OHIF 3.13's SEG loader (cornerstone adapters' checkOrientation) reads
 * PlaneOrientationSequence.ImageOrientationPatient, which a SEG of a radiograph without a frame
 * of reference does not have (and need not have): it throws and the SEG never loads. Give the
 * in-memory metadata the source image's orientation (the default [1,0,0,0,1,0] of a 2D image).
 * @param {object} segInstance OHIF naturalized SEG instance (patched in place)
 * @param {number[]} [iop] ImageOrientationPatient of the source image
 * @returns {boolean} whether it was patched
 */
export function patchSegOrientation(segInstance, iop = [1, 0, 0, 0, 1, 0]) {
  if (!segInstance) return false;
  const item = (seq) => (Array.isArray(seq) ? seq[0] : seq);
  const shared = item(segInstance.SharedFunctionalGroupsSequence);
  const perFrame = segInstance.PerFrameFunctionalGroupsSequence;
  const frame0 = item(perFrame);
  const has = (g) => item(g?.PlaneOrientationSequence)?.ImageOrientationPatient;
  if (has(shared) || has(frame0)) return false;
  const value = { ImageOrientationPatient: [...iop] };
  if (shared) shared.PlaneOrientationSequence = value;
  else segInstance.SharedFunctionalGroupsSequence = { PlaneOrientationSequence: value };
  return true;
}

/**
 * Watch display sets and viewports, and hydrate the best region SEG (binary, or pseudo-binary
 * fractional) for what is shown.
 * @param {object} services OHIF services
 */
export function startRegion(services) {
  const { displaySetService, viewportGridService, segmentationService } = services;
  const tryHydrate = () => {
    const segSets = displaySetService
      .getActiveDisplaySets()
      .filter((ds) => ds.Modality === 'SEG' && ds.instance && !ds.excludeFromThumbnailBrowser);
    if (!segSets.length) return;
    const described = segSets.map((ds) => ({ ds, d: describeSeg(ds.instance) }));
    const { viewports } = viewportGridService.getState();
    for (const [viewportId, vp] of viewports) {
      for (const uid of vp.displaySetInstanceUIDs || []) {
        const shown = displaySetService.getDisplaySetByUID(uid);
        if (!shown || shown.Modality === 'SEG') continue;
        const model = store.get().result.reports?.[0]?.modelName;
        const best = chooseSeg(
          described.map((x) => x.d),
          { role: 'region', seriesInstanceUID: shown.SeriesInstanceUID, modelName: model },
        );
        if (!best) continue;
        const seg = described.find((x) => x.d === best).ds;
        const iop = shown.instances?.[0]?.ImageOrientationPatient;
        for (const inst of seg.instances || [seg.instance]) {
          patchSegOrientation(inst, Array.isArray(iop) && iop.length === 6 ? iop.map(Number) : undefined);
        }
        const key = `${viewportId}|${seg.displaySetInstanceUID}`;
        if (hydrated.has(key)) continue;
        hydrated.add(key);
        store.set({ region: { status: 'loading', displaySetInstanceUID: seg.displaySetInstanceUID, seriesInstanceUID: seg.SeriesInstanceUID } });
        try {
          viewportGridService.setDisplaySetsForViewport({
            viewportId,
            displaySetInstanceUIDs: [seg.displaySetInstanceUID],
          });
        } catch (err) {
          console.error('[ai-anomaly] SEG hydration', err);
          store.set({ region: { status: 'error', message: err.message } });
        }
      }
    }
  };
  const { EVENTS: DS } = displaySetService;
  subs.push(displaySetService.subscribe(DS.DISPLAY_SETS_ADDED, tryHydrate));
  subs.push(displaySetService.subscribe(DS.DISPLAY_SETS_CHANGED, tryHydrate));
  subs.push(viewportGridService.subscribe(viewportGridService.EVENTS.GRID_STATE_CHANGED, tryHydrate));
  const vpEvents = services.cornerstoneViewportService?.EVENTS;
  if (vpEvents?.VIEWPORT_DATA_CHANGED) {
    subs.push(services.cornerstoneViewportService.subscribe(vpEvents.VIEWPORT_DATA_CHANGED, tryHydrate));
  }
  const segEvents = segmentationService?.EVENTS || {};
  const onSeg = () => {
    const segs = segmentationService.getSegmentations?.() || [];
    if (segs.length) {
      const s = segs[segs.length - 1];
      const cur = store.get().region;
      if (cur.status === 'ok' && cur.segmentationId === s.segmentationId) return;
      store.set({ region: { status: 'ok', segmentationId: s.segmentationId, label: s.label } });
      applyVisibility(services);
    }
  };
  for (const ev of ['SEGMENTATION_ADDED', 'SEGMENTATION_MODIFIED', 'SEGMENTATION_REPRESENTATION_MODIFIED']) {
    if (segEvents[ev]) subs.push(segmentationService.subscribe(segEvents[ev], onSeg));
  }
  tryHydrate();
}

/**
 * Show or hide the region overlay in every viewport (panel checkbox).
 *
 * OHIF 3.13's segmentation service has no `setSegmentationVisibility`; it has
 * `setSegmentVisibility(viewportId, segmentationId, segmentIndex, isVisible)`, so every segment
 * (the nested threshold levels) is set. An older service's `setSegmentationVisibility` is used
 * where it exists.
 * @param {object} services OHIF services
 * @returns {number} how many (viewport, segment) visibilities were set
 */
export function applyVisibility(services) {
  const { segmentationService, viewportGridService } = services;
  const { region, regionVisible } = store.get();
  if (!region.segmentationId || !segmentationService) return 0;
  const id = region.segmentationId;
  const segments = segmentationService.getSegmentation?.(id)?.segments || {};
  const indices = Object.keys(segments).map(Number).filter((i) => Number.isInteger(i) && i > 0);
  let set = 0;
  for (const [viewportId] of viewportGridService.getState().viewports) {
    try {
      if (segmentationService.setSegmentVisibility && indices.length) {
        for (const index of indices) {
          segmentationService.setSegmentVisibility(viewportId, id, index, regionVisible);
          set += 1;
        }
      } else if (segmentationService.setSegmentationVisibility) {
        segmentationService.setSegmentationVisibility(viewportId, id, regionVisible);
        set += 1;
      }
    } catch {
      // viewport without this segmentation
    }
  }
  return set;
}
