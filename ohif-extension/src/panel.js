// The right-side "AI anomaly" panel, rendered as vanilla DOM from the store.
import { formatScore, orderImages } from './sr.js';
import { HEAT_STOPS } from './seg.js';
import { store } from './store.js';
import { applyVisibility } from './region.js';
import { loadFeedback, loadSession, postFeedback } from './dicomweb.js';

const C = {
  text: '#e5e7eb',
  muted: '#9ca3af',
  line: '#1f2a44',
  red: '#dc2626',
  green: '#15803d',
  grey: '#4b5563',
  amber: '#f59e0b',
};

function el(tag, style = {}, text) {
  const e = document.createElement(tag);
  Object.assign(e.style, style);
  if (text !== undefined) e.textContent = text;
  return e;
}

const STATUS_LABEL = {
  abnormal: ['ANOMALY FLAGGED', C.red],
  normal: ['No anomaly flagged', C.green],
  not_analysed: ['Not analysed', C.grey],
  unknown: ['Status unknown', C.grey],
};

function row(label, value, testId) {
  const r = el('div', { display: 'flex', justifyContent: 'space-between', gap: '8px', padding: '2px 0' });
  r.append(el('span', { color: C.muted }, label));
  const v = el('span', { color: C.text, textAlign: 'right', fontVariantNumeric: 'tabular-nums', whiteSpace: 'nowrap' }, value);
  if (testId) v.dataset.testid = testId;
  r.append(v);
  return r;
}

function formatDateTime(key) {
  if (!key) return '';
  return `${key.slice(0, 4)}-${key.slice(4, 6)}-${key.slice(6, 8)} ${key.slice(8, 10)}:${key.slice(10, 12)}`;
}

function imageLabel(services, sopUID) {
  const sets = services?.displaySetService?.getActiveDisplaySets?.() || [];
  for (const ds of sets) {
    const inst = ds.instances?.find((i) => i.SOPInstanceUID === sopUID);
    if (inst) {
      const desc = ds.SeriesDescription ? ` ${ds.SeriesDescription}` : '';
      return `${ds.Modality || ''} S${ds.SeriesNumber ?? '?'}${desc} · image ${inst.InstanceNumber ?? 1}`;
    }
  }
  return `image …${String(sopUID || '').slice(-8)}`;
}

function renderReport(report, services) {
  const box = el('div', { padding: '10px 0', borderBottom: `1px solid ${C.line}` });
  box.dataset.testid = 'ai-report';
  const { study } = report;
  const [label, colour] = STATUS_LABEL[study.status] || STATUS_LABEL.unknown;
  const badge = el('div', {
    display: 'inline-block',
    background: colour,
    color: '#fff',
    fontWeight: '700',
    padding: '3px 10px',
    borderRadius: '4px',
    fontSize: '14px',
    letterSpacing: '0.02em',
  }, label);
  badge.dataset.testid = 'ai-flag';
  badge.dataset.status = study.status || 'unknown';
  box.append(badge);
  if (study.status === 'not_analysed') {
    box.append(el('div', { color: C.text, padding: '6px 0' }, `not analysed: ${study.reason || 'no reason given'}`));
  } else {
    const score = el('div', { fontSize: '28px', fontWeight: '700', color: C.text, padding: '6px 0 2px' });
    score.append(el('span', { fontSize: '13px', color: C.muted, fontWeight: '400', marginRight: '8px' }, 'Score'));
    const s = el('span', {}, formatScore(study.score));
    s.dataset.testid = 'ai-score';
    score.append(s);
    box.append(score);
    box.append(row('Threshold', formatScore(study.threshold), 'ai-threshold'));
  }
  const imgs = report.images;
  const pct = imgs.length === 1 ? imgs[0].healthyPercentile : undefined;
  if (pct !== undefined) box.append(row('Healthy images scoring lower', `${pct.toFixed(1)} %`, 'ai-percentile'));
  box.append(row('Model', [report.modelName, report.modelVersion].filter(Boolean).join(' ') || '–', 'ai-model'));
  if (report.contentDateTime) box.append(row('Analysed', formatDateTime(report.contentDateTime)));
  if (imgs.length) {
    const list = el('div', { marginTop: '8px' });
    list.append(el('div', { color: C.muted, fontSize: '12px', textTransform: 'uppercase', marginBottom: '2px' }, `Images (${imgs.length})`));
    for (const g of orderImages(imgs)) {
      const line = el('div', { display: 'flex', justifyContent: 'space-between', gap: '6px', padding: '2px 0', fontSize: '13px' });
      line.dataset.testid = 'ai-image-line';
      line.append(el('span', { color: C.text, overflow: 'hidden', textOverflow: 'ellipsis', whiteSpace: 'nowrap' }, imageLabel(services, g.sopInstanceUID)));
      let v;
      if (g.status === 'not_analysed') v = `not analysed: ${g.reason || 'no reason given'}`;
      else {
        const pctText = g.healthyPercentile !== undefined && imgs.length > 1 ? `, p${g.healthyPercentile.toFixed(0)}` : '';
        v = `${formatScore(g.score)}${g.status === 'abnormal' ? ' ⚠' : ''}${pctText}`;
      }
      const na = g.status === 'not_analysed';
      if (na) line.style.flexWrap = 'wrap';
      line.append(el('span', { color: g.status === 'abnormal' ? '#f87171' : na ? C.muted : C.text, whiteSpace: na ? 'normal' : 'nowrap' }, v));
      list.append(line);
    }
    box.append(list);
  }
  return box;
}

// The reader's judgement of a result: what each button sends (docs: dicom_node/feedback.py).
export const JUDGEMENTS = [
  ['agree', 'Agree'],
  ['false_alarm', 'Disagree: false alarm'],
  ['missed_finding', 'Disagree: missed finding'],
];
const READER_KEY = 'aiAnomaly.reader';
const MAX_COMMENT = 1024;

/**
 * Which judgements fit a result: a false alarm needs a flagged study, a missed finding one
 * that was not flagged (the node refuses the others with 409).
 * @param {string} status the study status of the report
 * @returns {string[]} judgement keys
 */
export function judgementsFor(status) {
  if (status === 'abnormal') return ['agree', 'false_alarm'];
  if (status === 'normal') return ['agree', 'missed_finding'];
  return [];
}

function describeRecord(r) {
  const label = JUDGEMENTS.find(([k]) => k === r.judgement)?.[1] || r.judgement;
  const when = String(r.created_at || '').replace('T', ' ').slice(0, 16);
  const where = r.delivered ? 'stored in the PACS' : 'stored on the node, on its way to the PACS';
  const comment = r.comment ? ` “${r.comment.length > 80 ? `${r.comment.slice(0, 79)}…` : r.comment}”` : '';
  return `${label}${comment} — ${r.reader}, ${when} (version ${r.version}, ${where})`;
}

function renderFeedback(report, studyUID) {
  const box = el('div', { padding: '10px 0', borderBottom: `1px solid ${C.line}` });
  box.dataset.testid = 'ai-feedback';
  const allowed = judgementsFor(report.study.status);
  if (!allowed.length || !studyUID) return null;
  box.append(el('div', { color: C.text, fontWeight: '600', marginBottom: '4px' }, 'Your judgement'));
  const current = el('div', { color: C.muted, fontSize: '12px', marginBottom: '6px' }, 'Loading earlier judgements…');
  current.dataset.testid = 'ai-feedback-current';
  const readerRow = el('label', { display: 'none', alignItems: 'center', gap: '6px', color: C.muted, fontSize: '12px', marginBottom: '4px' });
  const reader = document.createElement('input');
  reader.type = 'text';
  reader.maxLength = 64;
  reader.placeholder = 'your name';
  reader.dataset.testid = 'ai-feedback-reader';
  Object.assign(reader.style, { flex: '1', background: '#111827', color: C.text, border: `1px solid ${C.line}`, padding: '2px 4px' });
  try {
    reader.value = window.localStorage.getItem(READER_KEY) || '';
  } catch {
    // storage blocked
  }
  readerRow.append(document.createTextNode('Reader'), reader);
  const comment = document.createElement('textarea');
  comment.rows = 2;
  comment.maxLength = MAX_COMMENT;
  comment.placeholder = 'Comment (optional)';
  comment.dataset.testid = 'ai-feedback-comment';
  Object.assign(comment.style, { width: '100%', boxSizing: 'border-box', background: '#111827', color: C.text, border: `1px solid ${C.line}`, padding: '4px', resize: 'vertical', fontFamily: 'inherit', fontSize: '13px' });
  const buttons = el('div', { display: 'flex', flexWrap: 'wrap', gap: '6px', margin: '6px 0' });
  const status = el('div', { fontSize: '12px', color: C.muted, minHeight: '16px' });
  status.dataset.testid = 'ai-feedback-status';
  let session = { reader: null, feedback: false };
  // after a save: ask the node until the PACS has accepted the review SR (bounded)
  const followDelivery = async (record) => {
    for (let i = 0; i < 40 && !record.delivered; i += 1) {
      await new Promise((r) => setTimeout(r, 250));
      try {
        const fb = await loadFeedback(studyUID);
        const now = (fb.versions || []).find((v) => v.sop_instance_uid === record.sop_instance_uid);
        if (now?.delivered) {
          current.textContent = describeRecord(now);
          current.dataset.delivered = 'true';
          return;
        }
      } catch {
        // keep the last state
      }
    }
  };
  const send = async (judgement, button) => {
    const body = { judgement, comment: comment.value.trim(), model: report.modelName || '' };
    if (!session.reader) {
      body.reader = reader.value.trim();
      if (!body.reader) {
        status.style.color = '#f87171';
        status.textContent = 'Enter your name first.';
        reader.focus();
        return;
      }
      try {
        window.localStorage.setItem(READER_KEY, body.reader);
      } catch {
        // storage blocked
      }
    }
    for (const b of buttons.children) b.disabled = true;
    status.style.color = C.muted;
    status.textContent = 'Saving…';
    try {
      const record = await postFeedback(studyUID, body);
      status.style.color = C.green;
      status.dataset.version = String(record.version);
      status.textContent = `Saved: ${button.textContent} (version ${record.version}).`;
      current.textContent = describeRecord(record);
      comment.value = '';
      followDelivery(record);
    } catch (err) {
      status.style.color = '#f87171';
      status.textContent = `Not saved: ${err.message}`;
    } finally {
      for (const b of buttons.children) b.disabled = false;
    }
  };
  for (const [key, label] of JUDGEMENTS.filter(([k]) => allowed.includes(k))) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.dataset.testid = `ai-feedback-${key}`;
    Object.assign(b.style, {
      background: key === 'agree' ? C.green : '#7f1d1d',
      color: '#fff',
      border: 'none',
      borderRadius: '4px',
      padding: '4px 10px',
      cursor: 'pointer',
      fontSize: '13px',
    });
    b.addEventListener('click', () => send(key, b));
    buttons.append(b);
  }
  box.append(current, readerRow, comment, buttons, status);
  (async () => {
    session = await loadSession();
    if (!session.feedback) {
      current.textContent = 'Judgements need the node API (viewer server --node-api).';
      for (const b of buttons.children) b.disabled = true;
      return;
    }
    readerRow.style.display = session.reader ? 'none' : 'flex';
    if (session.reader) current.dataset.reader = session.reader;
    try {
      const fb = await loadFeedback(studyUID);
      const mine = (fb.current || []).find((r) => r.model === report.modelName) || (fb.current || [])[0];
      current.textContent = mine ? describeRecord(mine) : 'Not judged yet.';
    } catch (err) {
      current.textContent = `Earlier judgements unavailable: ${err.message}`;
    }
  })();
  return box;
}

function colourBar() {
  const wrap = el('div', { marginTop: '6px' });
  wrap.dataset.testid = 'ai-colour-bar';
  const stops = HEAT_STOPS.map(([x, [r, g, b]]) => {
    const a = Math.min(1, Math.max(0, (x - 0.15) / 0.35));
    return `rgba(${r},${g},${b},${a.toFixed(2)}) ${(x * 100).toFixed(0)}%`;
  });
  const bar = el('div', {
    height: '12px',
    borderRadius: '2px',
    border: `1px solid ${C.line}`,
    background: `linear-gradient(to right, ${stops.join(', ')}), repeating-conic-gradient(#333 0% 25%, #222 0% 50%) 0 0 / 8px 8px`,
  });
  const ticks = el('div', { position: 'relative', height: '16px', fontSize: '11px', color: C.muted });
  const tick = (x, text) => {
    const t = el('span', { position: 'absolute', left: `${x}%`, transform: x === 0 ? 'none' : x === 100 ? 'translateX(-100%)' : 'translateX(-50%)' }, text);
    ticks.append(t);
  };
  tick(0, '0');
  tick(50, '▲ pixel threshold');
  tick(100, '1');
  wrap.append(bar, ticks);
  return wrap;
}

function controls(services) {
  const box = el('div', { padding: '10px 0', borderBottom: `1px solid ${C.line}` });
  box.append(el('div', { color: C.text, fontWeight: '600', marginBottom: '4px' }, 'Anomaly map'));
  const status = el('div', { color: C.muted, fontSize: '12px', marginBottom: '4px' });
  status.dataset.testid = 'ai-map-status';
  const mk = (labelText, key, testId) => {
    const lab = el('label', { display: 'flex', alignItems: 'center', gap: '6px', color: C.text, cursor: 'pointer', padding: '2px 0' });
    const cb = document.createElement('input');
    cb.type = 'checkbox';
    cb.checked = store.get()[key];
    cb.dataset.testid = testId;
    cb.addEventListener('change', () => {
      store.set({ [key]: cb.checked });
      if (key === 'regionVisible') applyVisibility(services);
    });
    lab.append(cb, document.createTextNode(labelText));
    return lab;
  };
  const opacity = el('label', { display: 'flex', alignItems: 'center', gap: '6px', color: C.text, padding: '2px 0' });
  const range = document.createElement('input');
  range.type = 'range';
  range.min = '0';
  range.max = '100';
  range.value = String(Math.round(store.get().heatOpacity * 100));
  range.dataset.testid = 'ai-heat-opacity';
  range.style.flex = '1';
  range.addEventListener('input', () => store.set({ heatOpacity: Number(range.value) / 100 }));
  opacity.append(document.createTextNode('Opacity'), range);
  box.append(status, mk('Heat map', 'heatVisible', 'ai-heat-toggle'), opacity, colourBar(), mk('Thresholded region (SEG)', 'regionVisible', 'ai-region-toggle'));
  const update = (s) => {
    const parts = [];
    if (s.heatmap.status === 'ok') parts.push('heat map loaded');
    else if (s.heatmap.status === 'loading') parts.push('heat map loading…');
    else if (s.heatmap.status === 'error') parts.push(`heat map error: ${s.heatmap.message}`);
    else parts.push('no heat map');
    if (s.region.status === 'ok') parts.push('region loaded');
    else if (s.region.status === 'loading') parts.push('region loading…');
    else if (s.region.status === 'error') parts.push(`region error: ${s.region.message}`);
    if (s.imageFailures > 0) {
      parts.push(`${s.imageFailures} image${s.imageFailures > 1 ? 's' : ''} did not load in the viewer: no map is drawn over ${s.imageFailures > 1 ? 'them' : 'it'}`);
    }
    status.textContent = parts.join(' · ');
    status.dataset.imageFailures = String(s.imageFailures || 0);
  };
  update(store.get());
  return { box, update };
}

/**
 * Render the panel into `root` and keep it up to date; returns the cleanup function.
 * @param {HTMLElement} root
 * @param {object} services OHIF services
 * @returns {() => void}
 */
export function mountPanel(root, services) {
  Object.assign(root.style, { color: C.text, fontSize: '14px', lineHeight: '1.35', padding: '8px 12px', overflowY: 'auto', height: '100%' });
  root.dataset.testid = 'ai-anomaly-panel';
  root.replaceChildren();
  root.append(el('div', { fontWeight: '700', fontSize: '15px', color: C.text }, 'AI anomaly detection'));
  const result = el('div');
  const ctl = controls(services);
  // the notice stays in view however far the panel is scrolled (sticky under the title)
  const notice = el('div', { color: C.amber, fontSize: '12px', padding: '6px 0', position: 'sticky', top: '0', background: '#090c29', zIndex: '1' },
    'Research use only — not for clinical use. Unsupervised model trained on healthy images: the score and map show how unusual the image is, not a diagnosis.');
  notice.dataset.testid = 'ai-notice';
  root.append(notice, result, ctl.box);
  let last = null;
  const render = (s) => {
    ctl.update(s);
    const anyMap = s.heatmap.status !== 'none' || s.region.status !== 'none';
    ctl.box.style.display = s.result.status === 'ok' && anyMap ? '' : 'none';
    if (s.result === last) return;
    last = s.result;
    result.replaceChildren();
    result.dataset.status = s.result.status;
    result.dataset.testid = 'ai-result';
    if (s.result.status === 'loading' || s.result.status === 'idle') {
      result.append(el('div', { color: C.muted, padding: '10px 0' }, 'Looking for an AI result…'));
    } else if (s.result.status === 'error') {
      result.append(el('div', { color: '#f87171', padding: '10px 0' }, `Could not read the AI result: ${s.result.error}`));
    } else if (s.result.status === 'none') {
      const none = el('div', { color: C.text, padding: '10px 0' }, 'No AI result for this study.');
      none.dataset.testid = 'ai-none';
      result.append(none, el('div', { color: C.muted, fontSize: '12px' }, 'The node has not analysed it (yet), or it is not a study type the model is for.'));
    } else {
      for (const r of s.result.reports) {
        result.append(renderReport(r, services));
        const fb = renderFeedback(r, s.result.studyInstanceUID);
        if (fb) result.append(fb);
      }
    }
  };
  render(store.get());
  return store.subscribe(render);
}
