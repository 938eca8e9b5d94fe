// Study-list data: one request for the whole list, and the "flagged first" order (pure logic).
import { TAG, first } from './dicomjson.js';
import { isNodeOutput } from './sr.js';

/**
 * Normalise the node's `GET /studies/scores` answer into a Map by StudyInstanceUID.
 * Several rows for one study (several models or runs) combine: flagged if any is flagged,
 * the highest score, the newest finished_at.
 * @param {Array|object} body JSON list of {study_instance_uid, score, is_abnormal, threshold,
 *   model, finished_at}, or an object wrapping it in `studies`/`scores`/`items`
 * @returns {Map<string, {score: number|undefined, abnormal: boolean|undefined, threshold, models: string[], finishedAt, source: 'node'}>}
 */
export function scoresFromNode(body) {
  const rows = Array.isArray(body) ? body : body?.studies || body?.scores || body?.items || [];
  const out = new Map();
  for (const r of rows) {
    const uid = r?.study_instance_uid;
    if (!uid) continue;
    const score = typeof r.score === 'number' && Number.isFinite(r.score) ? r.score : undefined;
    const abnormal = typeof r.is_abnormal === 'boolean' ? r.is_abnormal : undefined;
    const cur = out.get(uid);
    if (!cur) {
      out.set(uid, {
        score,
        abnormal,
        threshold: r.threshold,
        models: r.model ? [r.model] : [],
        finishedAt: r.finished_at,
        source: 'node',
      });
      continue;
    }
    if (score !== undefined && (cur.score === undefined || score > cur.score)) {
      cur.score = score;
      cur.threshold = r.threshold;
    }
    if (abnormal !== undefined) cur.abnormal = Boolean(cur.abnormal) || abnormal;
    if (r.model && !cur.models.includes(r.model)) cur.models.push(r.model);
    if (r.finished_at && (!cur.finishedAt || r.finished_at > cur.finishedAt)) cur.finishedAt = r.finished_at;
  }
  return out;
}

/**
 * Fallback without the node's API: one QIDO `series?Modality=SR` tells which studies have a
 * result (no score: reading each SR would cost one request per study).
 * @param {object[]} qidoSeries DICOM JSON series from QIDO-RS
 * @returns {Map<string, {score: undefined, abnormal: undefined, models: string[], source: 'qido'}>}
 */
export function scoresFromQido(qidoSeries) {
  const out = new Map();
  for (const s of qidoSeries || []) {
    if (!isNodeOutput(s)) continue;
    const uid = first(s, TAG.StudyInstanceUID);
    if (!uid) continue;
    const model = first(s, TAG.ManufacturerModelName);
    const cur = out.get(uid) || { score: undefined, abnormal: undefined, models: [], source: 'qido' };
    if (model && !cur.models.includes(model)) cur.models.push(model);
    out.set(uid, cur);
  }
  return out;
}

/**
 * Sort key of a study for the AI column: flagged > normal > analysed without score > no result;
 * by score within a class.
 * @param {object|undefined} entry
 * @returns {number}
 */
export function sortKey(entry) {
  if (!entry) return 0;
  const s = typeof entry.score === 'number' ? entry.score : 0;
  const squash = s / (1 + Math.abs(s)); // any real score -> (-1, 1), keeps the order
  if (entry.abnormal === true) return 30 + squash;
  if (entry.abnormal === false) return 20 + squash;
  return 10 + squash;
}

/**
 * Ascending comparison for the table (the list uses it descending: flagged first).
 * @param {object|undefined} a
 * @param {object|undefined} b
 * @returns {number}
 */
export function compareEntries(a, b) {
  return sortKey(a) - sortKey(b);
}

/**
 * Text of the AI column cell.
 * @param {object|undefined} entry
 * @returns {{text: string, title: string, level: 'abnormal'|'normal'|'done'|'none'}}
 */
export function cellText(entry) {
  if (!entry) return { text: '', title: 'no AI result', level: 'none' };
  const models = entry.models?.length ? ` (${entry.models.join(', ')})` : '';
  const score = typeof entry.score === 'number' ? entry.score.toFixed(2) : undefined;
  if (entry.abnormal === true) return { text: `${score ?? ''} ⚠`.trim(), title: `AI: anomalous${models}`, level: 'abnormal' };
  if (entry.abnormal === false) return { text: score ?? 'normal', title: `AI: within normal${models}`, level: 'normal' };
  if (score !== undefined) return { text: score, title: `AI score${models}`, level: 'done' };
  return { text: 'AI ✓', title: `AI result available${models}; score in the viewer`, level: 'done' };
}
