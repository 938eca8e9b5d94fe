// Draw the node's FRACTIONAL SEG as a heat map over the cornerstone viewports (OHIF 3.13 refuses
// fractional SEGs). A <canvas> is laid over each viewport's canvas and redrawn on every
// IMAGE_RENDERED, mapping the frame's pixel corners through cornerstone's image->world->canvas
// transforms, so zoom, pan, rotation and flips stay registered with the image.
import { loadFrames, loadStudySegMetadata } from './dicomweb.js';
import { describeSeg, fractionalFrames, frameToRgba, parseMultipart } from './seg.js';
import { store } from './store.js';

const IMAGE_RENDERED = 'CORNERSTONE_IMAGE_RENDERED';
const ELEMENT_ENABLED = 'CORNERSTONE_ELEMENT_ENABLED';
// cornerstone 3D (OHIF 3.13) reports an image it could not fetch or decode with one of these,
// on its global event target, detail.imageId (e.g. Orthanc answering 500 for a frame)
const LOAD_FAILED_EVENTS = ['CORNERSTONE_IMAGE_LOAD_FAILED', 'IMAGE_LOAD_ERROR'];
const OVERLAY_CLASS = 'ai-anomaly-heatmap';
export const NOT_LOADED_TEXT = 'Image not loaded: the AI map is not shown';

/** sourceSOPInstanceUID -> {studyUID, seriesUID, sopUID, frameNumber, rows, columns, maxValue, canvas?, promise?} */
let bySource = new Map();
const listening = new WeakSet();
let started = false;
/** imageIds the viewer failed to load: a map is never drawn over the blank left in their place */
const failedImages = new Set();
let watchingLoads = false;

/**
 * The SeriesInstanceUID in a WADO-RS imageId (`wadors:.../series/<uid>/instances/...`).
 * @param {string} imageId
 * @returns {string|undefined}
 */
export function seriesOfImageId(imageId) {
  return /\/series\/([0-9.]+)\//.exec(String(imageId || ''))?.[1];
}

/**
 * What a failed image load means for the panel: the region's own SEG frames (the PACS could not
 * serve them, so OHIF's "Loading SEG…" would never end) or an image of the study.
 * @param {string} imageId the image that failed
 * @param {{status: string, seriesInstanceUID?: string}} region the store's region state
 * @returns {'region'|'image'}
 */
export function classifyFailure(imageId, region) {
  const series = seriesOfImageId(imageId);
  return series && region?.seriesInstanceUID === series ? 'region' : 'image';
}

/**
 * Start noting images cornerstone fails to load (call on mode enter, before images load).
 */
export function watchImageLoads() {
  const core = cs();
  if (!core || watchingLoads) return;
  watchingLoads = true;
  for (const name of LOAD_FAILED_EVENTS) {
    core.eventTarget.addEventListener(name, (evt) => {
      const imageId = evt.detail?.imageId;
      if (!imageId || failedImages.has(imageId)) return;
      failedImages.add(imageId);
      const { region } = store.get();
      if (classifyFailure(imageId, region) === 'region') {
        store.set({ region: { status: 'error', message: 'the PACS could not serve the region (SEG) frames' } });
      }
      redrawAll();
    });
  }
}

/**
 * Whether the heat map may be drawn for the viewport's current image: only over an image that
 * the viewport actually holds, never over one that failed to load.
 * @param {string} imageId the viewport's current imageId
 * @param {{imageId?: string}|undefined} shownImage the viewport's cornerstone image, if any
 * @param {Set<string>} failed imageIds that failed to load
 * @returns {'draw'|'failed'|'wait'}
 */
export function overlayState(imageId, shownImage, failed) {
  if (failed.has(imageId)) return 'failed';
  if (!shownImage || (shownImage.imageId && shownImage.imageId !== imageId)) return 'wait';
  return 'draw';
}

/**
 * Build the source-image -> fractional-frame index from SEG metadata (newest SEG wins).
 * @param {object[]} segInstances DICOM JSON of the study's SEG instances
 * @param {string} studyUID
 * @returns {Map<string, object>}
 */
export function indexFractional(segInstances, studyUID) {
  const index = new Map();
  const described = segInstances.map((inst) => ({ inst, d: describeSeg(inst) }));
  described.sort((a, b) => (a.d.dateTime + a.d.seriesNumber < b.d.dateTime + b.d.seriesNumber ? -1 : 1));
  for (const { inst, d } of described) {
    if (String(d.segmentationType).toUpperCase() !== 'FRACTIONAL' || d.role !== 'map') continue;
    const layout = fractionalFrames(inst);
    for (const f of layout.frames) {
      if (!f.sourceSOPInstanceUID || f.segmentNumber !== 1) continue;
      index.set(f.sourceSOPInstanceUID + (f.sourceFrame ? `#${f.sourceFrame}` : ''), {
        studyUID,
        seriesUID: d.seriesInstanceUID,
        sopUID: d.sopInstanceUID,
        modelName: d.modelName,
        frameNumber: f.frameNumber,
        rows: layout.rows,
        columns: layout.columns,
        maxValue: layout.maxValue,
        bitsAllocated: layout.bitsAllocated,
      });
    }
  }
  return index;
}

/**
 * Find the node's fractional SEGs of a study and start drawing them.
 * @param {string} studyUID
 */
export async function startHeatmap(studyUID) {
  store.set({ heatmap: { status: 'loading' } });
  try {
    bySource = indexFractional(await loadStudySegMetadata(studyUID), studyUID);
    store.set({ heatmap: bySource.size ? { status: 'ok', count: bySource.size } : { status: 'none' } });
  } catch (err) {
    console.error('[ai-anomaly] heat map', err);
    store.set({ heatmap: { status: 'error', message: err.message } });
  }
  attachAll();
  redrawAll();
}

/** Forget the current study's maps and remove overlays. */
export function stopHeatmap() {
  bySource = new Map();
  failedImages.clear();
  document.querySelectorAll(`canvas.${OVERLAY_CLASS}`).forEach((c) => c.remove());
}

function cs() {
  return window.cornerstone;
}

function attachAll() {
  const core = cs();
  if (!core) return;
  watchImageLoads();
  if (!started) {
    started = true;
    core.eventTarget.addEventListener(ELEMENT_ENABLED, (evt) => attach(evt.detail?.element));
    store.subscribe(() => redrawAll());
  }
  for (const ee of core.getEnabledElements?.() || []) attach(ee.viewport?.element);
}

function attach(element) {
  if (!element || listening.has(element)) return;
  listening.add(element);
  element.addEventListener(IMAGE_RENDERED, () => draw(element));
}

function redrawAll() {
  let failedShown = 0;
  for (const ee of cs()?.getEnabledElements?.() || []) {
    if (draw(ee.viewport?.element) === 'failed') failedShown += 1;
  }
  if ((store.get().imageFailures || 0) !== failedShown) store.set({ imageFailures: failedShown });
}

function sopOf(imageId) {
  const inst = cs()?.metaData?.get('instance', imageId);
  const frame = /\/frames\/(\d+)/.exec(imageId)?.[1];
  const sop = inst?.SOPInstanceUID || /\/instances\/([0-9.]+)/.exec(imageId)?.[1];
  return { sop, frame: frame ? Number(frame) : undefined, multi: Number(inst?.NumberOfFrames) > 1 };
}

function overlayFor(viewport) {
  const base = viewport.canvas;
  if (!base?.parentElement) return null;
  let c = base.parentElement.querySelector(`canvas.${OVERLAY_CLASS}`);
  if (!c) {
    c = document.createElement('canvas');
    c.className = OVERLAY_CLASS;
    c.setAttribute('data-testid', 'ai-heatmap-overlay');
    Object.assign(c.style, { position: 'absolute', left: '0', top: '0', width: '100%', height: '100%', pointerEvents: 'none' });
    base.insertAdjacentElement('afterend', c);
  }
  return c;
}

async function loadEntry(entry) {
  if (!entry.promise) {
    entry.promise = loadFrames(entry.studyUID, entry.seriesUID, entry.sopUID, [entry.frameNumber]).then(
      ({ body, contentType }) => {
        const part = parseMultipart(body, contentType)[0];
        const n = entry.rows * entry.columns;
        const values =
          entry.bitsAllocated === 16
            ? new Uint16Array(part.buffer.slice(part.byteOffset, part.byteOffset + n * 2))
            : part.subarray(0, n);
        const rgba = frameToRgba(values, entry.maxValue);
        const canvas = document.createElement('canvas');
        canvas.width = entry.columns;
        canvas.height = entry.rows;
        canvas.getContext('2d').putImageData(new ImageData(rgba, entry.columns, entry.rows), 0, 0);
        entry.canvas = canvas;
        redrawAll();
      },
    );
    entry.promise.catch((err) => {
      console.error('[ai-anomaly] heat map frame', err);
      store.set({ heatmap: { status: 'error', message: err.message } });
    });
  }
  return entry.promise;
}

function draw(element) {
  const core = cs();
  const ee = element && core?.getEnabledElement?.(element);
  const viewport = ee?.viewport;
  if (!viewport || typeof viewport.getCurrentImageId !== 'function') return undefined;
  const overlay = overlayFor(viewport);
  if (!overlay) return undefined;
  const { heatVisible, heatOpacity } = store.get();
  const imageId = viewport.getCurrentImageId();
  const { sop, frame, multi } = imageId ? sopOf(imageId) : {};
  const entry = sop && (bySource.get(multi && frame ? `${sop}#${frame}` : sop) || bySource.get(sop));
  const w = Math.round(overlay.clientWidth * devicePixelRatio);
  const hgt = Math.round(overlay.clientHeight * devicePixelRatio);
  if (overlay.width !== w || overlay.height !== hgt) {
    overlay.width = w;
    overlay.height = hgt;
  }
  const ctx = overlay.getContext('2d');
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  overlay.dataset.drawn = 'false';
  delete overlay.dataset.notLoaded;
  const state = overlayState(imageId, viewport.getCornerstoneImage?.(), failedImages);
  if (!entry || !heatVisible) return state;
  if (state === 'failed') {
    // a map over the blank of an image that did not load would look like a finding
    overlay.dataset.notLoaded = 'true';
    ctx.font = `${Math.round(14 * devicePixelRatio)}px sans-serif`;
    ctx.fillStyle = '#f59e0b';
    ctx.textAlign = 'center';
    ctx.fillText(NOT_LOADED_TEXT, overlay.width / 2, overlay.height / 2 + 40 * devicePixelRatio);
    return state;
  }
  if (state === 'wait') return state;
  if (!entry.canvas) {
    loadEntry(entry);
    return 'wait';
  }
  let p0, p1, p2;
  try {
    const toCanvas = (x, y) => viewport.worldToCanvas(core.utilities.imageToWorldCoords(imageId, [x, y]));
    p0 = toCanvas(0, 0);
    p1 = toCanvas(entry.columns, 0);
    p2 = toCanvas(0, entry.rows);
  } catch (err) {
    return 'wait'; // metadata not ready yet; the next render draws it
  }
  const d = devicePixelRatio;
  ctx.setTransform(
    ((p1[0] - p0[0]) / entry.columns) * d,
    ((p1[1] - p0[1]) / entry.columns) * d,
    ((p2[0] - p0[0]) / entry.rows) * d,
    ((p2[1] - p0[1]) / entry.rows) * d,
    p0[0] * d,
    p0[1] * d,
  );
  ctx.globalAlpha = heatOpacity;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(entry.canvas, 0, 0);
  overlay.dataset.drawn = 'true';
  return state;
}
