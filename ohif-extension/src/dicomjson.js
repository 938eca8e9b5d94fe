// Small readers for DICOM JSON (PS3.18 F.2), as returned by QIDO-RS and WADO-RS metadata.

/** Tags used by the extension. */
export const TAG = {
  SOPClassUID: '00080016',
  SOPInstanceUID: '00080018',
  ContentDate: '00080023',
  ContentTime: '00080033',
  SeriesDate: '00080021',
  SeriesTime: '00080031',
  Modality: '00080060',
  Manufacturer: '00080070',
  SeriesDescription: '0008103E',
  ManufacturerModelName: '00081090',
  ReferencedSeriesSequence: '00081115',
  ReferencedInstanceSequence: '0008114A',
  ReferencedSOPSequence: '00081199',
  ReferencedSOPInstanceUID: '00081155',
  ReferencedFrameNumber: '00081160',
  DerivationImageSequence: '00089124',
  SourceImageSequence: '00082112',
  SoftwareVersions: '00181020',
  StudyInstanceUID: '0020000D',
  SeriesInstanceUID: '0020000E',
  SeriesNumber: '00200011',
  InstanceNumber: '00200013',
  NumberOfFrames: '00280008',
  Rows: '00280010',
  Columns: '00280011',
  BitsAllocated: '00280100',
  SegmentationType: '00620001',
  ContentLabel: '00700080',
  SegmentSequence: '00620002',
  ReferencedSegmentNumber: '0062000B',
  MaximumFractionalValue: '0062000E',
  SegmentIdentificationSequence: '0062000A',
  SegmentNumber: '00620004',
  SegmentLabel: '00620005',
  PerFrameFunctionalGroupsSequence: '52009230',
  ValueType: '0040A040',
  ConceptNameCodeSequence: '0040A043',
  ConceptCodeSequence: '0040A168',
  ContentSequence: '0040A730',
  MeasuredValueSequence: '0040A300',
  NumericValue: '0040A30A',
  MeasurementUnitsCodeSequence: '004008EA',
  TextValue: '0040A160',
  UID: '0040A124',
  CodeValue: '00080100',
  LongCodeValue: '00080119',
  URNCodeValue: '00080120',
  CodingSchemeDesignator: '00080102',
  CodeMeaning: '00080104',
};

/**
 * All values of an attribute (empty array when absent or empty).
 * @param {object|undefined} ds DICOM JSON dataset
 * @param {string} tag 8 hex digits
 * @returns {Array}
 */
export function values(ds, tag) {
  const el = ds && (ds[tag] || ds[tag.toUpperCase()] || ds[tag.toLowerCase()]);
  return (el && Array.isArray(el.Value) && el.Value) || [];
}

/**
 * First value of an attribute, PN as its Alphabetic string, or undefined.
 * @param {object|undefined} ds DICOM JSON dataset
 * @param {string} tag 8 hex digits
 * @returns {*}
 */
export function first(ds, tag) {
  const v = values(ds, tag)[0];
  if (v && typeof v === 'object' && 'Alphabetic' in v) return v.Alphabetic;
  return v;
}

/**
 * First value as a number (DS/IS are strings or numbers in DICOM JSON), or undefined.
 * @param {object|undefined} ds
 * @param {string} tag
 * @returns {number|undefined}
 */
export function num(ds, tag) {
  const v = first(ds, tag);
  if (v === undefined || v === null || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * The first code item of a code sequence as {value, scheme, meaning}, or undefined.
 * @param {object} ds
 * @param {string} seqTag e.g. TAG.ConceptNameCodeSequence
 * @returns {{value: string, scheme: string, meaning: string}|undefined}
 */
export function code(ds, seqTag) {
  const item = values(ds, seqTag)[0];
  if (!item) return undefined;
  return {
    // Codes longer than 16 characters (e.g. ANOMALY_THRESHOLD) are in LongCodeValue.
    value: first(item, TAG.CodeValue) ?? first(item, TAG.LongCodeValue) ?? first(item, TAG.URNCodeValue),
    scheme: first(item, TAG.CodingSchemeDesignator),
    meaning: first(item, TAG.CodeMeaning),
  };
}

/**
 * DICOM DA + TM to a sortable string "YYYYMMDDHHMMSS.ffffff" ('' when no date).
 * @param {string|undefined} da
 * @param {string|undefined} tm
 * @returns {string}
 */
export function dateTimeKey(da, tm) {
  if (!da) return '';
  const t = String(tm || '').replace(/:/g, '');
  const [hms, frac = ''] = t.split('.');
  return `${da}${hms.padEnd(6, '0')}.${frac.padEnd(6, '0')}`;
}
