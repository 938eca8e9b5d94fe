// SEG choice, fractional-frame layout and multipart parsing (recorded Orthanc JSON).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { chooseSeg, describeSeg, fractionalFrames, frameToRgba, heatColour, isHiddenOutput, parseMultipart, segRole } from '../src/seg.js';
import { indexFractional } from '../src/heatmap.js';
import { patchSegOrientation } from '../src/region.js';

const fixture = (name) => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), 'utf8'));

test('describeSeg reads the recorded binary and fractional SEG', () => {
  const segs = fixture('abnormal_seg_metadata.json').map(describeSeg);
  const types = segs.map((s) => s.segmentationType).sort();
  assert.deepEqual(types, ['BINARY', 'FRACTIONAL']);
  for (const s of segs) {
    assert.equal(s.manufacturer, 'AI Anomaly Node');
    assert.equal(s.referencedSeriesUIDs.length, 1);
    assert.equal(s.referencedSOPInstanceUIDs.length, 1);
  }
  assert.equal(segs.find((s) => s.segmentationType === 'BINARY').seriesNumber, 9001);
});

test('chooseSeg: our binary SEG of the shown series, preferring the model, then the newest', () => {
  const segs = fixture('abnormal_seg_metadata.json').map(describeSeg);
  const series = segs[0].referencedSeriesUIDs[0];
  assert.equal(chooseSeg(segs, { seriesInstanceUID: series }).seriesNumber, 9001);
  assert.equal(chooseSeg(segs, { seriesInstanceUID: '9.9.9' }), undefined);
  const base = { manufacturer: 'AI Anomaly Node', segmentationType: 'BINARY', referencedSeriesUIDs: ['1'], seriesNumber: 9001 };
  const old = { ...base, dateTime: '20260101000000.000000', modelName: 'a' };
  const recent = { ...base, dateTime: '20260201000000.000000', modelName: 'b' };
  const foreign = { ...base, manufacturer: 'Vendor', dateTime: '20990101000000.000000' };
  assert.equal(chooseSeg([old, recent, foreign], { seriesInstanceUID: '1' }), recent);
  assert.equal(chooseSeg([old, recent], { seriesInstanceUID: '1', modelName: 'a' }), old);
});

test('naturalized OHIF instances are described too', () => {
  const d = describeSeg({
    SOPInstanceUID: '1.2', SeriesInstanceUID: '1.3', SeriesNumber: 9001, Manufacturer: 'AI Anomaly Node',
    SegmentationType: 'BINARY', ReferencedSeriesSequence: [{ SeriesInstanceUID: '1.4', ReferencedInstanceSequence: [{ ReferencedSOPInstanceUID: '1.5' }] }],
  });
  assert.deepEqual(d.referencedSeriesUIDs, ['1.4']);
  assert.deepEqual(d.referencedSOPInstanceUIDs, ['1.5']);
});

test('display sets OHIF cannot show are hidden: any fractional SEG, our SR and KOS only', () => {
  const seg = '1.2.840.10008.5.1.4.1.1.66.4';
  assert.equal(isHiddenOutput({ SOPClassUID: seg, SegmentationType: 'FRACTIONAL', Manufacturer: 'X' }), true);
  assert.equal(isHiddenOutput({ SOPClassUID: seg, SegmentationType: 'BINARY', Manufacturer: 'AI Anomaly Node' }), false);
  assert.equal(isHiddenOutput({ Modality: 'SR', Manufacturer: 'AI Anomaly Node' }), true);
  assert.equal(isHiddenOutput({ Modality: 'SR', Manufacturer: 'Radiologist workstation' }), false);
  assert.equal(isHiddenOutput({ Modality: 'KO', Manufacturer: 'AI Anomaly Node' }), true);
  assert.equal(isHiddenOutput({ Modality: 'KO', Manufacturer: 'Radiologist workstation' }), false);
});

test('fractional frame layout maps the frame to its source image', () => {
  const frac = fixture('abnormal_seg_metadata.json').find((i) => i['00620001'].Value[0] === 'FRACTIONAL');
  const layout = fractionalFrames(frac);
  assert.equal(layout.maxValue, 255);
  assert.equal(layout.frames.length, 1);
  const src = describeSeg(frac).referencedSOPInstanceUIDs[0];
  assert.equal(layout.frames[0].sourceSOPInstanceUID, src);
  const index = indexFractional(fixture('abnormal_seg_metadata.json'), 'study');
  assert.deepEqual([...index.keys()], [src]);
  assert.equal(index.get(src).frameNumber, 1);
  assert.equal(index.get(src).rows, layout.rows);
});

test('multipart/related parsing returns the frame bytes', () => {
  const enc = new TextEncoder();
  const payload = new Uint8Array([0, 1, 2, 13, 10, 255]);
  const body = new Uint8Array([
    ...enc.encode('--b0undary\r\nContent-Type: application/octet-stream\r\n\r\n'),
    ...payload,
    ...enc.encode('\r\n--b0undary--\r\n'),
  ]);
  const parts = parseMultipart(body, 'multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; boundary=b0undary');
  assert.equal(parts.length, 1);
  assert.deepEqual([...parts[0]], [...payload]);
});

test('heat map colours: transparent below the floor, opaque from the pixel threshold', () => {
  const rgba = frameToRgba(new Uint8Array([0, 38, 128, 255]), 255);
  assert.equal(rgba[3], 0);
  assert.ok(rgba[7] < 10);
  assert.equal(rgba[11], 255);
  assert.deepEqual([...rgba.slice(12, 16)], [...heatColour(1), 255]);
});

test('SEG of a 2D image gets the orientation OHIF 3.13 insists on, once', () => {
  const inst = { SharedFunctionalGroupsSequence: [{}], PerFrameFunctionalGroupsSequence: [{}] };
  assert.equal(patchSegOrientation(inst), true);
  assert.deepEqual(inst.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence.ImageOrientationPatient, [1, 0, 0, 0, 1, 0]);
  assert.equal(patchSegOrientation(inst), false);
  const ct = { PerFrameFunctionalGroupsSequence: [{ PlaneOrientationSequence: [{ ImageOrientationPatient: [0, 1, 0, 0, 0, -1] }] }] };
  assert.equal(patchSegOrientation(ct), false);
});

test('region of an image of a width not a multiple of 8: a pseudo-binary FRACTIONAL SEG, shown, not hidden', () => {
  const seg = '1.2.840.10008.5.1.4.1.1.66.4';
  const node = 'AI Anomaly Node';
  const region = { SOPClassUID: seg, SegmentationType: 'FRACTIONAL', ContentLabel: 'ANOMALY_REGION', Manufacturer: node };
  const map = { SOPClassUID: seg, SegmentationType: 'FRACTIONAL', ContentLabel: 'ANOMALY_MAP', Manufacturer: node };
  assert.equal(isHiddenOutput(region), false);
  assert.equal(isHiddenOutput(map), true);
  assert.equal(isHiddenOutput({ ...region, Manufacturer: 'X' }), true);
  assert.equal(segRole('ANOMALY_REGION', 'FRACTIONAL'), 'region');
  assert.equal(segRole('ANOMALY_MAP', 'FRACTIONAL'), 'map');
  assert.equal(segRole(undefined, 'BINARY'), 'region');
  assert.equal(segRole(undefined, 'FRACTIONAL'), 'map');
  const described = [
    { ...region, SOPInstanceUID: '1', SeriesInstanceUID: 'r', SeriesNumber: 9001, ReferencedSeriesSequence: [{ SeriesInstanceUID: 's' }] },
    { ...map, SOPInstanceUID: '2', SeriesInstanceUID: 'm', SeriesNumber: 9002, ReferencedSeriesSequence: [{ SeriesInstanceUID: 's' }] },
  ].map(describeSeg);
  assert.equal(chooseSeg(described, { seriesInstanceUID: 's' }).seriesInstanceUID, 'r');
  assert.equal(chooseSeg(described, { role: 'map', seriesInstanceUID: 's' }).seriesInstanceUID, 'm');
});

test('the heat map index takes the map, never a fractional region SEG', () => {
  const insts = fixture('abnormal_seg_metadata.json');
  const frac = insts.find((i) => i['00620001'].Value[0] === 'FRACTIONAL');
  const region = JSON.parse(JSON.stringify(frac));
  region['00080018'] = { vr: 'UI', Value: ['9.9.9.1'] };
  region['00200011'] = { vr: 'IS', Value: [9001] };
  region['00700080'] = { vr: 'CS', Value: ['ANOMALY_REGION'] };
  const index = indexFractional([frac, region], 'study');
  const [entry] = [...index.values()];
  assert.equal(index.size, 1);
  assert.equal(entry.sopUID, frac['00080018'].Value[0]);
});
