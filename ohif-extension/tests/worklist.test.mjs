// Study-list scores (node API and QIDO fallback) and the flagged-first order.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { cellText, compareEntries, relative, scoresFromNode, scoresFromQido, sortKey } from '../src/worklist.js';
import { withAiColumn } from '../src/index.js';

const fixture = (name) => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8'));

test('node API rows combine per study (any model flagged, highest score on its own scale)', () => {
  const m = scoresFromNode([
    { study_instance_uid: '1', score: 0.4, is_abnormal: false, threshold: 0.5, model: 'a', finished_at: '2026-01-01T00:00:00Z' },
    { study_instance_uid: '1', score: 0.9, is_abnormal: true, threshold: 0.6, model: 'b', finished_at: '2026-01-02T00:00:00Z' },
    { study_instance_uid: '2', score: null, is_abnormal: null, model: 'a' },
  ]);
  assert.deepEqual(m.get('1'), { score: 0.9, abnormal: true, threshold: 0.6, models: ['a', 'b'], finishedAt: '2026-01-02T00:00:00Z', source: 'node' });
  assert.equal(m.get('2').score, undefined);
  assert.equal(scoresFromNode({ studies: [{ study_instance_uid: '3', score: 1 }] }).get('3').score, 1);
});

test('QIDO fallback marks the studies with our SR (recorded Orthanc answer)', () => {
  const m = scoresFromQido(fixture('qido_series_sr_all.json'));
  assert.equal(m.size, 3);
  for (const e of m.values()) {
    assert.equal(e.source, 'qido');
    assert.deepEqual(e.models, ['default-cxr']);
    // the SR may say "not analysed": the fallback must not claim success
    assert.equal(cellText(e).text, 'AI report');
    assert.ok(!cellText(e).text.includes('✓'));
  }
});

test('a study the node did not analyse shows "not analysed", never a success mark, and ranks below analysed ones', () => {
  const m = scoresFromNode([{ study_instance_uid: '9', score: null, is_abnormal: null, model: 'default-cxr' }]);
  const e = m.get('9');
  assert.deepEqual(cellText(e), { text: 'not analysed', title: 'AI: not analysed (default-cxr); the reason is in the viewer', level: 'not-analysed' });
  assert.ok(sortKey(e) < sortKey({ score: -5, abnormal: false, source: 'node' }));
  assert.ok(sortKey(e) < sortKey({ score: undefined, abnormal: undefined, source: 'qido' }));
  assert.ok(sortKey(e) > sortKey(undefined));
});

test('scores of models with different thresholds rank by score / threshold, raw score shown', () => {
  // model a: threshold 0.1, score 0.15 (1.5x); model b: threshold 2.0, score 2.2 (1.1x)
  const a = { score: 0.15, threshold: 0.1, abnormal: true, source: 'node', models: ['a'] };
  const b = { score: 2.2, threshold: 2.0, abnormal: true, source: 'node', models: ['b'] };
  assert.ok(compareEntries(a, b) > 0, 'a is further above its own threshold');
  assert.equal(cellText(a).text, '0.15 ⚠');
  assert.match(cellText(a).title, /1\.50 x its threshold 0\.100/);
  assert.equal(relative(3, 0), 3);
  // combining two models' rows of one study keeps the one highest on its own scale
  const m = scoresFromNode([
    { study_instance_uid: 's', score: 2.2, threshold: 2.0, is_abnormal: true, model: 'b' },
    { study_instance_uid: 's', score: 0.15, threshold: 0.1, is_abnormal: true, model: 'a' },
  ]);
  assert.equal(m.get('s').score, 0.15);
  assert.equal(m.get('s').threshold, 0.1);
});

test('flagged first, by score, then normal, then analysed without score, then no result', () => {
  const rows = {
    none: undefined,
    qido: { score: undefined, abnormal: undefined, source: 'qido' },
    normalLow: { score: 0.1, abnormal: false },
    normalHigh: { score: 0.45, abnormal: false },
    flagLow: { score: 0.55, abnormal: true },
    flagHigh: { score: 3.2, abnormal: true },
    negative: { score: -2, abnormal: false },
  };
  const order = Object.keys(rows).sort((a, b) => -compareEntries(rows[a], rows[b]));
  assert.deepEqual(order, ['flagHigh', 'flagLow', 'normalHigh', 'normalLow', 'negative', 'qido', 'none']);
  assert.ok(sortKey({ score: 1e9, abnormal: false }) < sortKey({ score: -1e9, abnormal: true }));
});

test('cell text', () => {
  assert.deepEqual(cellText({ score: 0.871, abnormal: true, models: ['m'] }), { text: '0.87 ⚠', title: 'AI: anomalous (m)', level: 'abnormal' });
  assert.equal(cellText({ score: 0.2, abnormal: false }).text, '0.20');
  assert.equal(cellText(undefined).level, 'none');
});

test('the AI column goes after the study date, once', () => {
  const cols = [{ id: 'patientName' }, { id: 'studyDateTime' }, { id: 'modalities' }];
  const out = withAiColumn(withAiColumn(cols));
  assert.deepEqual(out.map((c) => c.id), ['patientName', 'studyDateTime', 'aiAnomaly', 'modalities']);
  assert.equal(out[2].meta.label, 'AI anomaly');
});
