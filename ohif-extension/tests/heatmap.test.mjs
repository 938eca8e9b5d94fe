// The heat map's guards around images the viewer could not load (pure logic; the browser side
// is exercised by tests/e2e.mjs --expect-load-failure on a study whose SEG Orthanc cannot serve).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifyFailure, overlayState, seriesOfImageId } from '../src/heatmap.js';

const SEG_SERIES = '1.2.826.0.1.3680043.8.498.84147144296169109978847687253999731645';
const segFrame = `wadors:http://127.0.0.1:3000/dicom-web/studies/1.2.3/series/${SEG_SERIES}/instances/1.2.9/frames/2`;
const image = 'wadors:http://127.0.0.1:3000/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1';

test('the series of a WADO-RS imageId', () => {
  assert.equal(seriesOfImageId(segFrame), SEG_SERIES);
  assert.equal(seriesOfImageId(image), '1.2.4');
  assert.equal(seriesOfImageId('dicomfile:0'), undefined);
  assert.equal(seriesOfImageId(undefined), undefined);
});

test("a failed frame of the region's SEG is a region failure, any other an image failure", () => {
  const region = { status: 'loading', seriesInstanceUID: SEG_SERIES };
  assert.equal(classifyFailure(segFrame, region), 'region');
  assert.equal(classifyFailure(image, region), 'image');
  assert.equal(classifyFailure(segFrame, { status: 'none' }), 'image');
});

test('no map over an image that failed, none before the image is in the viewport', () => {
  const failed = new Set([image]);
  assert.equal(overlayState(image, { imageId: image }, failed), 'failed');
  assert.equal(overlayState(image, undefined, failed), 'failed');
  assert.equal(overlayState(segFrame, undefined, failed), 'wait');
  assert.equal(overlayState(segFrame, { imageId: image }, failed), 'wait');
  assert.equal(overlayState(segFrame, { imageId: segFrame }, failed), 'draw');
});
