// The panel's "Thresholded region (SEG)" checkbox must hide and show the region in OHIF 3.13,
// whose segmentation service sets visibility per segment (there is no setSegmentationVisibility).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { applyVisibility } from '../src/region.js';
import { store } from '../src/store.js';

/** The parts of OHIF 3.13's services applyVisibility uses, recording every call. */
function services313() {
  const calls = [];
  return {
    calls,
    services: {
      viewportGridService: { getState: () => ({ viewports: new Map([['vp1', {}], ['vp2', {}]]) }) },
      segmentationService: {
        getSegmentation: (id) => (id === 'seg-1' ? { segments: { 1: {}, 2: {}, 3: {} } } : undefined),
        setSegmentVisibility: (viewportId, id, index, visible) => calls.push([viewportId, id, index, visible]),
      },
    },
  };
}

test('unticking the region hides every segment of the SEG in every viewport, ticking shows it', () => {
  const { calls, services } = services313();
  store.set({ region: { status: 'ok', segmentationId: 'seg-1' }, regionVisible: false });
  assert.equal(applyVisibility(services), 6);
  assert.deepEqual(calls.filter((c) => c[3] === false).length, 6);
  assert.deepEqual(new Set(calls.map((c) => c[2])), new Set([1, 2, 3]));
  calls.length = 0;
  store.set({ regionVisible: true });
  applyVisibility(services);
  assert.ok(calls.length === 6 && calls.every((c) => c[3] === true && c[1] === 'seg-1'));
});

test('nothing to do before the region is loaded', () => {
  const { calls, services } = services313();
  store.set({ region: { status: 'loading' }, regionVisible: false });
  assert.equal(applyVisibility(services), 0);
  assert.equal(calls.length, 0);
});
