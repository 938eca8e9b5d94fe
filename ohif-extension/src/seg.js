// Which SEG to show, and how to turn the FRACTIONAL SEG into a heat map (pure logic).
import { TAG, dateTimeKey, first, num, values } from './dicomjson.js';
import { OUTPUT_MANUFACTURER } from './sr.js';

export const SEG_SOP_CLASS_UID = '1.2.840.10008.5.1.4.1.1.66.4';
export const BINARY_SEG_SERIES_NUMBER = 9001;
export const FRACTIONAL_SEG_SERIES_NUMBER = 9002;

/**
 * Summarise a SEG instance given as DICOM JSON (WADO-RS metadata) or as an OHIF naturalized
 * instance (keywords as keys).
 * @param {object} inst
 * @returns {{sopInstanceUID, seriesInstanceUID, seriesNumber, manufacturer, segmentationType,
 *   contentLabel, role: 'region'|'map', modelName, referencedSeriesUIDs: string[],
 *   referencedSOPInstanceUIDs: string[], dateTime: string}}
 */
export function describeSeg(inst) {
  const nat = 'SOPInstanceUID' in inst || 'SeriesInstanceUID' in inst;
  const get = (kw) => (nat ? inst[kw] : first(inst, TAG[kw]));
  const seq = (ds, kw) => {
    if (!ds) return [];
    if (nat) return Array.isArray(ds[kw]) ? ds[kw] : ds[kw] ? [ds[kw]] : [];
    return values(ds, TAG[kw]);
  };
  const getIn = (ds, kw) => (nat ? ds?.[kw] : first(ds, TAG[kw]));
  const refSeries = seq(inst, 'ReferencedSeriesSequence');
  const referencedSeriesUIDs = refSeries.map((s) => getIn(s, 'SeriesInstanceUID')).filter(Boolean);
  const referencedSOPInstanceUIDs = refSeries
    .flatMap((s) => seq(s, 'ReferencedInstanceSequence'))
    .map((r) => getIn(r, 'ReferencedSOPInstanceUID'))
    .filter(Boolean);
  return {
    sopInstanceUID: get('SOPInstanceUID'),
    seriesInstanceUID: get('SeriesInstanceUID'),
    seriesNumber: Number(get('SeriesNumber')) || 0,
    manufacturer: get('Manufacturer'),
    segmentationType: get('SegmentationType'),
    contentLabel: get('ContentLabel'),
    role: segRole(get('ContentLabel'), get('SegmentationType')),
    modelName: get('ManufacturerModelName'),
    referencedSeriesUIDs,
    referencedSOPInstanceUIDs,
    dateTime:
      dateTimeKey(get('ContentDate'), get('ContentTime')) || dateTimeKey(get('SeriesDate'), get('SeriesTime')),
  };
}

/**
 * What one of the node's SEGs holds: the region (nested threshold levels, ContentLabel
 * ANOMALY_REGION) or the continuous map (ANOMALY_MAP). The region is BINARY, except for images
 * whose width is not a multiple of 8: there it is a FRACTIONAL (OCCUPANCY) SEG of 0 and the
 * maximum value only, because Orthanc cannot serve 1-bit frames of such a width. SEGs without a
 * ContentLabel we know: BINARY = region, anything else = map.
 * @param {string|undefined} contentLabel
 * @param {string|undefined} segmentationType
 * @returns {'region'|'map'}
 */
export function segRole(contentLabel, segmentationType) {
  const label = String(contentLabel || '').toUpperCase();
  if (label === 'ANOMALY_REGION') return 'region';
  if (label === 'ANOMALY_MAP') return 'map';
  return String(segmentationType || '').toUpperCase() === 'BINARY' ? 'region' : 'map';
}

/**
 * Choose the SEG to overlay on a displayed series: the node's own SEG of the wanted type that
 * references that series (or any series when none is given), preferring the given model, then
 * the newest (content date/time), then the highest series number.
 * @param {object[]} segs results of describeSeg
 * @param {{role?: 'region'|'map', seriesInstanceUID?: string, modelName?: string}} want
 * @returns {object|undefined}
 */
export function chooseSeg(segs, { role = 'region', seriesInstanceUID, modelName } = {}) {
  const ok = segs.filter(
    (s) =>
      s.manufacturer === OUTPUT_MANUFACTURER &&
      (s.role || segRole(s.contentLabel, s.segmentationType)) === role &&
      (!seriesInstanceUID || s.referencedSeriesUIDs.includes(seriesInstanceUID)),
  );
  const rank = (s) => [modelName && s.modelName === modelName ? 1 : 0, s.dateTime || '', s.seriesNumber];
  ok.sort((a, b) => {
    const ra = rank(a);
    const rb = rank(b);
    for (let i = 0; i < ra.length; i++) if (ra[i] !== rb[i]) return ra[i] < rb[i] ? 1 : -1;
    return 0;
  });
  return ok[0];
}

/**
 * Should OHIF's own handlers be kept away from this instance (they cannot show it)?
 * True for any FRACTIONAL SEG (OHIF 3.13: "Fractional segmentations are not yet supported")
 * except the node's region (ContentLabel ANOMALY_REGION: only 0 and the maximum value, which
 * OHIF 3.13 shows like a binary SEG),
 * for the node's SR (its image-level TID 1500 crashes OHIF's SR viewport), and for the node's
 * Key Object Selection of flagged images (for PACS worklists; nothing for a viewport to show).
 * @param {object} inst OHIF naturalized instance
 * @returns {boolean}
 */
export function isHiddenOutput(inst) {
  if (!inst) return false;
  if (inst.SOPClassUID === SEG_SOP_CLASS_UID) {
    if (String(inst.SegmentationType || '').toUpperCase() !== 'FRACTIONAL') return false;
    const ownRegion =
      inst.Manufacturer === OUTPUT_MANUFACTURER && segRole(inst.ContentLabel, inst.SegmentationType) === 'region';
    return !ownRegion;
  }
  if (inst.Modality === 'SR' || inst.Modality === 'KO') return inst.Manufacturer === OUTPUT_MANUFACTURER;
  return false;
}

/**
 * Frame layout of a FRACTIONAL SEG instance (DICOM JSON): which frame belongs to which source
 * image, its size and the maximum fractional value.
 * @param {object} inst WADO-RS metadata of the SEG instance
 * @returns {{rows: number, columns: number, maxValue: number, bitsAllocated: number,
 *   frames: {frameNumber: number, segmentNumber: number, sourceSOPInstanceUID: string|undefined, sourceFrame: number|undefined}[]}}
 */
export function fractionalFrames(inst) {
  const rows = num(inst, TAG.Rows);
  const columns = num(inst, TAG.Columns);
  const nFrames = num(inst, TAG.NumberOfFrames) || 1;
  const perFrame = values(inst, TAG.PerFrameFunctionalGroupsSequence);
  const desc = describeSeg(inst);
  const frames = [];
  for (let i = 0; i < nFrames; i++) {
    const fg = perFrame[i];
    const seg = values(fg, TAG.SegmentIdentificationSequence)[0];
    const src = values(values(fg, TAG.DerivationImageSequence)[0], TAG.SourceImageSequence)[0];
    let sourceSOPInstanceUID = first(src, TAG.ReferencedSOPInstanceUID);
    if (!sourceSOPInstanceUID && nFrames === 1 && desc.referencedSOPInstanceUIDs.length === 1) {
      sourceSOPInstanceUID = desc.referencedSOPInstanceUIDs[0];
    }
    frames.push({
      frameNumber: i + 1,
      segmentNumber: num(seg, TAG.ReferencedSegmentNumber) || 1,
      sourceSOPInstanceUID,
      sourceFrame: num(src, TAG.ReferencedFrameNumber),
    });
  }
  return {
    rows,
    columns,
    maxValue: num(inst, TAG.MaximumFractionalValue) || 255,
    bitsAllocated: num(inst, TAG.BitsAllocated) || 8,
    frames,
  };
}

/**
 * Split a multipart/related body (WADO-RS frames) into its parts' bytes.
 * @param {Uint8Array} body
 * @param {string} contentType the response's Content-Type (carries the boundary)
 * @returns {Uint8Array[]}
 */
export function parseMultipart(body, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType || '');
  if (!m) return [body];
  const enc = new TextEncoder();
  const delim = enc.encode(`--${m[1]}`);
  const find = (from) => {
    outer: for (let i = from; i <= body.length - delim.length; i++) {
      for (let j = 0; j < delim.length; j++) if (body[i + j] !== delim[j]) continue outer;
      return i;
    }
    return -1;
  };
  const parts = [];
  let pos = find(0);
  while (pos >= 0) {
    const start = pos + delim.length;
    if (body[start] === 0x2d && body[start + 1] === 0x2d) break; // closing "--"
    // end of headers: CRLFCRLF
    let h = start;
    while (h < body.length - 3 && !(body[h] === 13 && body[h + 1] === 10 && body[h + 2] === 13 && body[h + 3] === 10)) h++;
    const dataStart = h + 4;
    const next = find(dataStart);
    if (next < 0) break;
    let dataEnd = next;
    if (body[dataEnd - 2] === 13 && body[dataEnd - 1] === 10) dataEnd -= 2;
    parts.push(body.subarray(dataStart, dataEnd));
    pos = next;
  }
  return parts;
}

/** Colour stops of the heat map (value 0..1 -> RGB), blue -> cyan -> yellow -> red. */
export const HEAT_STOPS = [
  [0.0, [0, 0, 160]],
  [0.25, [0, 170, 255]],
  [0.5, [255, 230, 0]],
  [0.75, [255, 120, 0]],
  [1.0, [220, 0, 0]],
];

/**
 * Colour of a map value (0..1).
 * @param {number} v
 * @returns {number[]} [r, g, b]
 */
export function heatColour(v) {
  const x = Math.min(1, Math.max(0, v));
  for (let i = 1; i < HEAT_STOPS.length; i++) {
    const [x1, c1] = HEAT_STOPS[i];
    const [x0, c0] = HEAT_STOPS[i - 1];
    if (x <= x1) {
      const t = (x - x0) / (x1 - x0);
      return c0.map((c, k) => Math.round(c + (c1[k] - c) * t));
    }
  }
  return HEAT_STOPS[HEAT_STOPS.length - 1][1];
}

/**
 * Turn one fractional frame into RGBA pixels: colour from the value, alpha ramping from 0 at
 * `floor` to 255 at the first pixel threshold (0.5 by the contract), so healthy tissue stays clear.
 * @param {Uint8Array|Uint16Array} frame values 0..maxValue, row-major
 * @param {number} maxValue MaximumFractionalValue
 * @param {{floor?: number, full?: number}} [opts]
 * @returns {Uint8ClampedArray} RGBA, 4 bytes per pixel
 */
export function frameToRgba(frame, maxValue, { floor = 0.15, full = 0.5 } = {}) {
  const lut = new Uint8ClampedArray((maxValue + 1) * 4);
  for (let v = 0; v <= maxValue; v++) {
    const x = v / maxValue;
    const [r, g, b] = heatColour(x);
    lut.set([r, g, b, Math.round(255 * Math.min(1, Math.max(0, (x - floor) / (full - floor))))], v * 4);
  }
  const out = new Uint8ClampedArray(frame.length * 4);
  for (let i = 0; i < frame.length; i++) {
    const v = Math.min(maxValue, frame[i]) * 4;
    out[i * 4] = lut[v];
    out[i * 4 + 1] = lut[v + 1];
    out[i * 4 + 2] = lut[v + 2];
    out[i * 4 + 3] = lut[v + 3];
  }
  return out;
}
