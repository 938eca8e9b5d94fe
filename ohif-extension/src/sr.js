// Parse the node's TID 1500 SR (WADO-RS metadata JSON) into the AI result shown in the panel.
// Content per docs/CONTRACTS.md: one measurement group per source image (tracking identifier
// "anomaly <SOPInstanceUID>") and one "anomaly study" group; codes in scheme 99AINODE.
import { TAG, code, dateTimeKey, first, num, values } from './dicomjson.js';

export const OUTPUT_MANUFACTURER = 'AI Anomaly Node';
export const SR_SERIES_NUMBER = 9003;
// A reader's judgement of the SR (the node's "review" SR): not a result to show as one.
export const REVIEW_SERIES_NUMBER = 9007;
const SCHEME = '99AINODE';
const STATUS_BY_CODE = {
  'SCT:263654008': 'abnormal',
  'SCT:17621005': 'normal',
  [`${SCHEME}:NOT_ANALYSED`]: 'not_analysed',
};
// SeriesDescription of the node's outputs: "RESEARCH USE ONLY: AI anomaly <kind> (...)" since
// issue 24, "AI anomaly <kind> (research use only, ...)" before.
const OUTPUT_DESCRIPTION = /^(RESEARCH USE ONLY: )?AI anomaly\b/i;
// Image items that point at a SEG segment (Referenced Segmentation Frame, Referenced Segment).
const REGION_REFERENCES = new Set(['DCM:121214', 'DCM:121191']);
// Concept names that are context, not a "not analysed" reason.
const CONTEXT_CONCEPTS = new Set(['112039', '111001', '111002', '111003', '121013', '121014', '121015']);

/**
 * Is this QIDO series (or instance) one of the node's outputs?
 * @param {object} ds DICOM JSON with Manufacturer, optionally SeriesDescription
 * @returns {boolean}
 */
export function isNodeOutput(ds) {
  const m = first(ds, TAG.Manufacturer);
  if (m !== undefined) return m === OUTPUT_MANUFACTURER;
  // Manufacturer not returned by this QIDO: fall back on the contract's description prefix.
  return OUTPUT_DESCRIPTION.test(first(ds, TAG.SeriesDescription) || '');
}

function conceptKey(item) {
  const c = code(item, TAG.ConceptNameCodeSequence);
  return c ? `${c.scheme}:${c.value}` : '';
}

function numericValue(item) {
  const mv = values(item, TAG.MeasuredValueSequence)[0];
  return mv ? num(mv, TAG.NumericValue) : undefined;
}

/**
 * Parse one measurement group (CONTAINER 125007) of our SR.
 * @param {object} group DICOM JSON content item
 * @returns {object} {trackingId, sopInstanceUID, score, threshold, healthyPercentile, status, statusMeaning, reason, algorithmName, algorithmVersion}
 */
export function parseGroup(group) {
  const out = {
    trackingId: undefined,
    sopInstanceUID: undefined,
    frameNumber: undefined,
    score: undefined,
    threshold: undefined,
    healthyPercentile: undefined,
    status: undefined,
    statusMeaning: undefined,
    reason: undefined,
    algorithmName: undefined,
    algorithmVersion: undefined,
    isRegion: false,
  };
  for (const item of values(group, TAG.ContentSequence)) {
    const type = first(item, TAG.ValueType);
    const key = conceptKey(item);
    const conceptValue = key.split(':')[1];
    if (type === 'TEXT' && key === 'DCM:112039') out.trackingId = first(item, TAG.TextValue);
    else if (type === 'TEXT' && key === 'DCM:111001') out.algorithmName = first(item, TAG.TextValue);
    else if (type === 'TEXT' && key === 'DCM:111003') out.algorithmVersion = first(item, TAG.TextValue);
    else if (type === 'NUM' && key === `${SCHEME}:ANOMALY_SCORE`) out.score = numericValue(item);
    else if (type === 'NUM' && key === `${SCHEME}:ANOMALY_THRESHOLD`) out.threshold = numericValue(item);
    else if (type === 'NUM' && key === `${SCHEME}:HEALTHY_PERCENTILE`) out.healthyPercentile = numericValue(item);
    else if (type === 'CODE' && (key === 'DCM:121071' || key === `${SCHEME}:ANOMALY_STATUS`)) {
      // the standard Finding (since issue 24), or the private status of older SRs
      const c = code(item, TAG.ConceptCodeSequence);
      if (c) {
        out.status = STATUS_BY_CODE[`${c.scheme}:${c.value}`] || 'unknown';
        out.statusMeaning = c.meaning;
      }
    } else if (type === 'SCOORD' || type === 'SCOORD3D' || (type === 'IMAGE' && REGION_REFERENCES.has(key))) {
      out.isRegion = true; // a SEG segment or its outline (TID 1410/1411), not an image's result
    } else if (type === 'IMAGE' && out.sopInstanceUID === undefined) {
      // the analysed image comes first; the Parametric Map its score came from may follow
      const ref = values(item, TAG.ReferencedSOPSequence)[0];
      out.sopInstanceUID = first(ref, TAG.ReferencedSOPInstanceUID);
      out.frameNumber = num(ref, TAG.ReferencedFrameNumber);
    } else if (type === 'TEXT' && !CONTEXT_CONCEPTS.has(conceptValue)) {
      // e.g. a "Reason" / "Comment" text next to status NOT_ANALYSED
      const text = String(first(item, TAG.TextValue) || '').replace(/^Not analysed:\s*/i, '');
      out.reason = [out.reason, text].filter(Boolean).join('; ');
    }
  }
  if (!out.sopInstanceUID && /^anomaly\s+\d[\d.]*$/.test(out.trackingId || '')) {
    out.sopInstanceUID = out.trackingId.split(/\s+/)[1];
  }
  return out;
}

function* measurementGroups(items) {
  for (const item of items) {
    const key = conceptKey(item);
    if (first(item, TAG.ValueType) !== 'CONTAINER') continue;
    if (key === 'DCM:125007') yield item;
    else yield* measurementGroups(values(item, TAG.ContentSequence));
  }
}

/**
 * Parse the node's SR instance (WADO-RS metadata JSON of one instance).
 * @param {object} sr DICOM JSON dataset of the SR instance
 * @returns {object} {sopInstanceUID, seriesInstanceUID, studyInstanceUID, manufacturer, modelName,
 *   modelVersion, seriesDescription, researchOnly, contentDateTime, study, images}
 *   where study = {score, threshold, status, statusMeaning} (derived from the images when
 *   the SR has no "anomaly study" group) and images = parsed per-image groups.
 */
export function parseAnomalySr(sr) {
  const groups = [...measurementGroups(values(sr, TAG.ContentSequence))]
    .map(parseGroup)
    .filter((g) => !g.isRegion);
  const studyGroup = groups.find((g) => (g.trackingId || '').trim().toLowerCase() === 'anomaly study');
  const images = groups.filter((g) => g !== studyGroup);
  const any = studyGroup || images[0] || {};
  let study;
  if (studyGroup) {
    study = pick(studyGroup);
  } else {
    const analysed = images.filter((g) => g.score !== undefined);
    const top = analysed.reduce((a, b) => (a && a.score >= b.score ? a : b), undefined);
    study = top ? pick(top) : { score: undefined, threshold: undefined, status: images[0]?.status };
    if (analysed.some((g) => g.status === 'abnormal')) study.status = 'abnormal';
  }
  const seriesDescription = first(sr, TAG.SeriesDescription) || '';
  return {
    sopInstanceUID: first(sr, TAG.SOPInstanceUID),
    seriesInstanceUID: first(sr, TAG.SeriesInstanceUID),
    studyInstanceUID: first(sr, TAG.StudyInstanceUID),
    manufacturer: first(sr, TAG.Manufacturer),
    modelName: any.algorithmName || first(sr, TAG.ManufacturerModelName),
    modelVersion: any.algorithmVersion || first(sr, TAG.SoftwareVersions),
    seriesDescription,
    seriesNumber: num(sr, TAG.SeriesNumber),
    researchOnly: /research use only|not for clinical use/i.test(seriesDescription),
    contentDateTime: dateTimeKey(first(sr, TAG.ContentDate), first(sr, TAG.ContentTime)),
    study,
    images,
  };
}

function pick(g) {
  return { score: g.score, threshold: g.threshold, status: g.status, statusMeaning: g.statusMeaning, reason: g.reason };
}

/**
 * Is this parsed SR a reader's review of a result (series 9007, "AI anomaly review ...")?
 * @param {object} r result of parseAnomalySr
 * @returns {boolean}
 */
export function isReview(r) {
  return r.seriesNumber === REVIEW_SERIES_NUMBER || /^(RESEARCH USE ONLY: )?AI anomaly review\b/i.test(r.seriesDescription || '');
}

/**
 * Choose the SR instances to show: the node's own, newest first, one per model.
 * @param {object[]} parsed results of parseAnomalySr
 * @returns {object[]} newest report per model, sorted by model name
 */
export function latestPerModel(parsed) {
  const byModel = new Map();
  for (const r of parsed) {
    if (r.manufacturer !== undefined && r.manufacturer !== OUTPUT_MANUFACTURER) continue;
    if (isReview(r)) continue;
    const key = r.modelName || '';
    const cur = byModel.get(key);
    if (!cur || (r.contentDateTime || '') > (cur.contentDateTime || '')) byModel.set(key, r);
  }
  return [...byModel.values()].sort((a, b) => String(a.modelName).localeCompare(String(b.modelName)));
}

/**
 * Format a score for display (2 decimals, '–' when missing).
 * @param {number|undefined} v
 * @returns {string}
 */
export function formatScore(v) {
  return typeof v === 'number' && Number.isFinite(v) ? v.toFixed(2) : '–';
}

/**
 * The per-image lines of a report in reading order: flagged images first, then normal ones,
 * each by score (highest first), then not-analysed images; ties keep their SR order.
 * @param {Array<{status: string, score?: number}>} images parsed image groups
 * @returns {Array} a new, sorted array
 */
export function orderImages(images) {
  const rank = (g) => (g.status === 'abnormal' ? 0 : g.status === 'not_analysed' ? 2 : 1);
  return images
    .map((g, i) => ({ g, i }))
    .sort((a, b) => {
      const byRank = rank(a.g) - rank(b.g);
      if (byRank) return byRank;
      const sa = typeof a.g.score === 'number' ? a.g.score : -Infinity;
      const sb = typeof b.g.score === 'number' ? b.g.score : -Infinity;
      return sb - sa || a.i - b.i;
    })
    .map((x) => x.g);
}
