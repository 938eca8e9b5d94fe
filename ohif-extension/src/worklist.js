// Study-list data: one request for the whole list, and the "flagged first" order (pure logic).
import { TAG, first } from './dicomjson.js';
import { isNodeOutput } from './sr.js';

/**
 * Normalise the node's `GET /studies/scores` answer into a Map by StudyInstanceUID.
 * Several rows for one study (several models or runs) combine: flagged if any is flagged,
 * the score that is highest *on its own model's scale* (score / that model's threshold: raw
 * scores of models with different thresholds are not comparable), the newest finished_at.
 * A row without a score is a study the node did not analyse (no image suitable for its model).
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
    if (score !== undefined && (cur.score === undefined || relative(score, r.threshold) > relative(cur.score, cur.threshold))) {
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
 * A score on its model's calibrated scale: score / threshold (1 = at the threshold), or the raw
 * score where the threshold is missing or not positive.
 * @param {number} score
 * @param {number|undefined} threshold
 * @returns {number}
 */
export function relative(score, threshold) {
  return typeof threshold === 'number' && Number.isFinite(threshold) && threshold > 0 ? score / threshold : score;
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
 * Sort key of a study for the AI column: flagged > normal > AI report (QIDO, result unknown)
 * > not analysed > no result; within a class by the score on its model's calibrated scale
 * (`relative`), so studies scored by models with different thresholds rank fairly.
 * @param {object|undefined} entry
 * @returns {number}
 */
export function sortKey(entry) {
  if (!entry) return 0;
  const s = typeof entry.score === 'number' ? relative(entry.score, entry.threshold) : 0;
  const squash = s / (1 + Math.abs(s)); // any real score -> (-1, 1), keeps the order
  if (entry.abnormal === true) return 40 + squash;
  if (entry.abnormal === false) return 30 + squash;
  if (notAnalysed(entry)) return 10;
  return 20 + squash;
}

/**
 * The node answered for this study but scored none of its images: not analysed.
 * @param {object|undefined} entry
 * @returns {boolean}
 */
export function notAnalysed(entry) {
  return entry?.source === 'node' && entry.score === undefined && entry.abnormal === undefined;
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
 * Not analysed never shows as a success mark; the QIDO fallback, which cannot tell an analysed
 * study from a not-analysed one without reading each SR, says only that an AI report exists.
 * @param {object|undefined} entry
 * @returns {{text: string, title: string, level: 'abnormal'|'normal'|'done'|'not-analysed'|'none'}}
 */
export function cellText(entry) {
  if (!entry) return { text: '', title: 'no AI result', level: 'none' };
  const models = entry.models?.length ? ` (${entry.models.join(', ')})` : '';
  const score = typeof entry.score === 'number' ? entry.score.toFixed(2) : undefined;
  const scale =
    typeof entry.score === 'number' && typeof entry.threshold === 'number' && entry.threshold > 0
      ? `; ${relative(entry.score, entry.threshold).toFixed(2)} x its threshold ${entry.threshold.toPrecision(3)}`
      : '';
  if (entry.abnormal === true) return { text: `${score ?? ''} ⚠`.trim(), title: `AI: anomalous${models}${scale}`, level: 'abnormal' };
  if (entry.abnormal === false) return { text: score ?? 'normal', title: `AI: within normal${models}${scale}`, level: 'normal' };
  if (score !== undefined) return { text: score, title: `AI score${models}${scale}`, level: 'done' };
  if (notAnalysed(entry)) return { text: 'not analysed', title: `AI: not analysed${models}; the reason is in the viewer`, level: 'not-analysed' };
  return { text: 'AI report', title: `AI report available${models}; open the study for the result`, level: 'done' };
}
