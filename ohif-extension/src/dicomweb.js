// DICOMweb / node API requests from the browser (same origin, through server/serve.mjs).
import { TAG, first } from './dicomjson.js';
import { isNodeOutput, latestPerModel, parseAnomalySr } from './sr.js';
import { scoresFromNode, scoresFromQido } from './worklist.js';

let services = null;

/** Remember OHIF's services (for the data source and the auth header). */
export function setServices(s) {
  services = s;
}

function dicomwebRoots() {
  const cfg = window.config || {};
  const name = cfg.defaultDataSourceName;
  const ds = (cfg.dataSources || []).find((d) => d.sourceName === name) || (cfg.dataSources || [])[0];
  const c = ds?.configuration || {};
  return {
    qido: (c.qidoRoot || '/dicom-web').replace(/\/$/, ''),
    wado: (c.wadoRoot || c.qidoRoot || '/dicom-web').replace(/\/$/, ''),
  };
}

function authHeaders() {
  const h = services?.userAuthenticationService?.getAuthorizationHeader?.();
  return h && typeof h === 'object' ? h : {};
}

async function getJson(url) {
  const res = await fetch(url, { headers: { accept: 'application/dicom+json, application/json', ...authHeaders() } });
  if (res.status === 204) return [];
  if (!res.ok) throw new Error(`${res.status} ${res.statusText} for ${url.split('?')[0]}`);
  const text = await res.text();
  return text ? JSON.parse(text) : [];
}

/**
 * Read the node's results of a study from its SR(s): QIDO for SR series, WADO-RS metadata each.
 * @param {string} studyUID
 * @returns {Promise<object[]>} newest report per model (see sr.latestPerModel)
 */
export async function loadStudyReports(studyUID) {
  const { qido, wado } = dicomwebRoots();
  const series = await getJson(
    `${qido}/studies/${studyUID}/series?Modality=SR&includefield=00080070&includefield=00081090`,
  );
  const ours = series.filter(isNodeOutput);
  const parsed = [];
  for (const s of ours) {
    const seriesUID = first(s, TAG.SeriesInstanceUID);
    const instances = await getJson(`${wado}/studies/${studyUID}/series/${seriesUID}/metadata`);
    for (const inst of instances) parsed.push(parseAnomalySr(inst));
  }
  return latestPerModel(parsed);
}

/**
 * WADO-RS metadata of all SEG instances of a study (few series: the node writes two per image).
 * @param {string} studyUID
 * @returns {Promise<object[]>} DICOM JSON instances
 */
export async function loadStudySegMetadata(studyUID) {
  const { qido, wado } = dicomwebRoots();
  const series = await getJson(`${qido}/studies/${studyUID}/series?Modality=SEG&includefield=00080070`);
  const out = [];
  for (const s of series.filter(isNodeOutput)) {
    const seriesUID = first(s, TAG.SeriesInstanceUID);
    out.push(...(await getJson(`${wado}/studies/${studyUID}/series/${seriesUID}/metadata`)));
  }
  return out;
}

/**
 * Fetch raw frames (uncompressed) of an instance.
 * @param {string} studyUID
 * @param {string} seriesUID
 * @param {string} sopUID
 * @param {number[]} frameNumbers 1-based
 * @returns {Promise<{body: Uint8Array, contentType: string}>}
 */
export async function loadFrames(studyUID, seriesUID, sopUID, frameNumbers) {
  const { wado } = dicomwebRoots();
  const url = `${wado}/studies/${studyUID}/series/${seriesUID}/instances/${sopUID}/frames/${frameNumbers.join(',')}`;
  const res = await fetch(url, {
    headers: {
      accept: 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1',
      ...authHeaders(),
    },
  });
  if (!res.ok) throw new Error(`${res.status} ${res.statusText} for frames of ${sopUID}`);
  return { body: new Uint8Array(await res.arrayBuffer()), contentType: res.headers.get('content-type') || '' };
}

/**
 * Scores for the study list in one request: the node's API, else one QIDO on SR series.
 * @param {string} scoresUrl e.g. '/ainode/studies/scores'
 * @returns {Promise<{scores: Map, source: 'node'|'qido'|'none'}>}
 */
export async function loadWorklistScores(scoresUrl) {
  if (scoresUrl) {
    try {
      const res = await fetch(scoresUrl, { headers: { accept: 'application/json' } });
      if (res.ok) return { scores: scoresFromNode(await res.json()), source: 'node' };
    } catch {
      // fall through to QIDO
    }
  }
  try {
    const { qido } = dicomwebRoots();
    const series = await getJson(
      `${qido}/series?Modality=SR&includefield=00080070&includefield=0020000D&includefield=00081090&limit=1000`,
    );
    return { scores: scoresFromQido(series), source: 'qido' };
  } catch (err) {
    console.warn('[ai-anomaly] no worklist scores:', err.message);
    return { scores: new Map(), source: 'none' };
  }
}

/**
 * The viewer server's session: who is logged in (the reader), and whether judgements can be sent.
 * @returns {Promise<{reader: string|null, feedback: boolean}>}
 */
export async function loadSession() {
  try {
    const res = await fetch('/viewer/session', { headers: { accept: 'application/json' } });
    if (res.ok) return await res.json();
  } catch {
    // an older server without the route
  }
  return { reader: null, feedback: false };
}

/**
 * The readers' judgements of a study (node API through the viewer server).
 * @param {string} studyUID
 * @returns {Promise<{current: object[], versions: object[]}>}
 */
export async function loadFeedback(studyUID) {
  const res = await fetch(`/ainode/studies/${encodeURIComponent(studyUID)}/feedback`, {
    headers: { accept: 'application/json' },
  });
  if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
  return res.json();
}

/**
 * Send a reader's judgement; resolves to the stored version, rejects with the node's message.
 * @param {string} studyUID
 * @param {{judgement: string, comment?: string, reader?: string, model?: string}} body
 * @returns {Promise<object>}
 */
export async function postFeedback(studyUID, body) {
  const res = await fetch(`/ainode/studies/${encodeURIComponent(studyUID)}/feedback`, {
    method: 'POST',
    headers: { accept: 'application/json', 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  let data = {};
  try {
    data = await res.json();
  } catch {
    // not JSON: keep the status line
  }
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}
