// The panel's judgement buttons: which fit which result (the node refuses the others with 409).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JUDGEMENTS, judgementsFor } from '../src/panel.js';

test('a flagged study can be agreed with or called a false alarm; a normal one agreed or missed', () => {
  assert.deepEqual(judgementsFor('abnormal'), ['agree', 'false_alarm']);
  assert.deepEqual(judgementsFor('normal'), ['agree', 'missed_finding']);
  assert.deepEqual(judgementsFor('not_analysed'), []);
  assert.deepEqual(JUDGEMENTS.map(([k]) => k), ['agree', 'false_alarm', 'missed_finding']);
  assert.deepEqual(JUDGEMENTS.map(([, label]) => label), ['Agree', 'Disagree: false alarm', 'Disagree: missed finding']);
});
