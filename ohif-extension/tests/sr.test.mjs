// SR parsing against DICOM JSON recorded from a real Orthanc (tests/fixtures/record.mjs).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { formatScore, isNodeOutput, isReview, latestPerModel, orderImages, parseAnomalySr, parseGroup } from '../src/sr.js';

const fixture = (name) => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8'));

test('abnormal study: score, threshold, flag, model and per-image group from the real SR', () => {
  const [inst] = fixture('abnormal_sr_metadata.json');
  const r = parseAnomalySr(inst);
  assert.equal(r.manufacturer, 'AI Anomaly Node');
  assert.equal(r.study.status, 'abnormal');
  assert.equal(r.study.score, 0.87);
  assert.equal(r.study.threshold, 0.5);
  assert.equal(r.modelName, 'default-cxr');
  assert.equal(r.modelVersion, '0.1.0');
  assert.equal(r.researchOnly, true);
  assert.equal(r.images.length, 1);
  const [img] = r.images;
  assert.match(img.sopInstanceUID, /^[0-9.]+$/);
  assert.equal(img.trackingId, `anomaly ${img.sopInstanceUID}`);
  assert.equal(img.status, 'abnormal');
  assert.equal(img.healthyPercentile, 99.4);
  assert.ok(r.contentDateTime.length >= 14);
});

test('normal study parses as normal', () => {
  const [inst] = fixture('normal_sr_metadata.json');
  const r = parseAnomalySr(inst);
  assert.equal(r.study.status, 'normal');
  assert.ok(r.study.score < r.study.threshold);
});

test('codes longer than 16 characters are read from LongCodeValue', () => {
  const [inst] = fixture('abnormal_sr_metadata.json');
  // ANOMALY_THRESHOLD / HEALTHY_PERCENTILE do not fit CodeValue (SH): the fixture must use 00080119
  assert.match(JSON.stringify(inst), /"00080119"/);
  assert.equal(parseAnomalySr(inst).images[0].threshold, 0.5);
});

test('QIDO series are recognised as the node output by Manufacturer', () => {
  const series = fixture('abnormal_qido_sr.json');
  assert.equal(series.filter(isNodeOutput).length, 1);
  assert.equal(isNodeOutput({ '00080070': { vr: 'LO', Value: ['Other vendor'] } }), false);
  assert.equal(isNodeOutput({ '0008103E': { vr: 'LO', Value: ['AI anomaly report (research use only)'] } }), true);
});

const text = (code, meaning, value) => ({
  '0040A040': { vr: 'CS', Value: ['TEXT'] },
  '0040A043': { vr: 'SQ', Value: [{ '00080100': { vr: 'SH', Value: [code] }, '00080102': { vr: 'SH', Value: ['DCM'] }, '00080104': { vr: 'LO', Value: [meaning] } }] },
  '0040A160': { vr: 'UT', Value: [value] },
});

test('not analysed: status code and reason text', () => {
  const group = {
    '0040A730': {
      vr: 'SQ',
      Value: [
        text('112039', 'Tracking Identifier', 'anomaly 1.2.3.4'),
        {
          '0040A040': { vr: 'CS', Value: ['CODE'] },
          '0040A043': { vr: 'SQ', Value: [{ '00080119': { vr: 'UC', Value: ['ANOMALY_STATUS'] }, '00080102': { vr: 'SH', Value: ['99AINODE'] }, '00080104': { vr: 'LO', Value: ['Anomaly status'] } }] },
          '0040A168': { vr: 'SQ', Value: [{ '00080100': { vr: 'SH', Value: ['NOT_ANALYSED'] }, '00080102': { vr: 'SH', Value: ['99AINODE'] }, '00080104': { vr: 'LO', Value: ['Not analysed'] } }] },
        },
        text('121106', 'Comment', 'lateral view: model is for frontal chest radiographs'),
      ],
    },
  };
  const g = parseGroup(group);
  assert.equal(g.status, 'not_analysed');
  assert.equal(g.sopInstanceUID, '1.2.3.4');
  assert.equal(g.reason, 'lateral view: model is for frontal chest radiographs');
  assert.equal(g.score, undefined);
});

test('newest report per model wins', () => {
  const a = { manufacturer: 'AI Anomaly Node', modelName: 'm', contentDateTime: '20260101120000.000000', study: {} };
  const b = { ...a, contentDateTime: '20260102120000.000000' };
  const c = { ...a, modelName: 'other' };
  const d = { ...a, manufacturer: 'Someone else', contentDateTime: '20270101000000.000000' };
  assert.deepEqual(latestPerModel([a, b, c, d]), [b, c]);
});

test('formatScore', () => {
  assert.equal(formatScore(0.8712), '0.87');
  assert.equal(formatScore(undefined), '–');
});

test('not analysed study from the real SR writer: status and reason, no score', () => {
  const [inst] = fixture('not_analysed_sr_metadata.json');
  const r = parseAnomalySr(inst);
  assert.equal(r.study.status, 'not_analysed');
  assert.equal(r.study.score, undefined);
  assert.equal(r.images[0].status, 'not_analysed');
  assert.equal(r.images[0].reason, 'image too small for the model (64 px)');
});

test('per-image lines: flagged first, then normal, each by score, then not analysed', () => {
  const imgs = [
    { id: 'n1', status: 'normal', score: 0.1 },
    { id: 'na', status: 'not_analysed' },
    { id: 'a1', status: 'abnormal', score: 0.6 },
    { id: 'n2', status: 'normal', score: 0.3 },
    { id: 'a2', status: 'abnormal', score: 0.9 },
  ];
  assert.deepEqual(orderImages(imgs).map((g) => g.id), ['a2', 'a1', 'n2', 'n1', 'na']);
  assert.equal(imgs[0].id, 'n1', 'the parsed report is not reordered in place');
});

test("a reader's review SR (series 9007) is never shown as the model's result", () => {
  const [inst] = fixture('normal_sr_metadata.json');
  const report = parseAnomalySr(inst);
  const review = { ...report, seriesNumber: 9007, seriesDescription: 'AI anomaly review (research use only, not for clinical use)', contentDateTime: '99991231235959' };
  assert.equal(isReview(review), true);
  assert.equal(isReview(report), false);
  assert.deepEqual(latestPerModel([report, review]), [report]);
});

test('an IHE AIR SR (issue 24): status from Finding 121071, image before its map, region groups skipped', () => {
  // written by ai_engine's pipeline for tests/data/dicom/kermany_pneumonia_mono2 (default-cxr),
  // as pydicom's DICOM JSON: its SEG segments (TID 1410) and outlines (SCOORD) are groups too
  const [inst] = fixture('air_sr_metadata.json');
  const r = parseAnomalySr(inst);
  assert.equal(r.images.length, 1);
  const [img] = r.images;
  assert.equal(img.sopInstanceUID, '1.2.826.0.1.3680043.8.498.83109994822334633454263746311009412353');
  assert.equal(img.status, 'abnormal');
  assert.equal(img.statusMeaning, 'Abnormal');
  assert.ok(Math.abs(img.score - 0.1344) < 1e-3);
  assert.ok(img.score >= img.threshold);
  assert.equal(r.study.status, 'abnormal');
  assert.equal(r.researchOnly, true);
  assert.match(r.seriesDescription, /^RESEARCH USE ONLY: AI anomaly report/);
  assert.equal(isNodeOutput({ '0008103E': { vr: 'LO', Value: [r.seriesDescription] } }), true);
});
