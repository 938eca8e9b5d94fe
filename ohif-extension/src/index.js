// OHIF 3.13 run-time extension of the AI anomaly node. Loaded by app-config.js:
//   extensions: ['/anomaly/index.js']
// Modules: panel "ainode-anomaly.panelModule.anomaly", SOP class handler
// "ainode-anomaly.sopClassHandlerModule.ai-hidden" (keeps fractional SEGs and our SR away from
// OHIF viewports that cannot show them), a global customization adding the "AI anomaly" study-list
// column; onModeEnter loads the study's SR, heat map and SEG overlay.
import { loadStudyReports, loadWorklistScores, setServices } from './dicomweb.js';
import { startHeatmap, stopHeatmap, watchImageLoads } from './heatmap.js';
import { mountPanel } from './panel.js';
import { domHost, h } from './react.js';
import { startRegion, stopRegion } from './region.js';
import { isHiddenOutput, SEG_SOP_CLASS_UID } from './seg.js';
import { store } from './store.js';
import { cellText, compareEntries } from './worklist.js';

export const EXTENSION_ID = 'ainode-anomaly';
const COLUMN_ID = 'aiAnomaly';
const SR_SOP_CLASS_UIDS = [
  '1.2.840.10008.5.1.4.1.1.88.11',
  '1.2.840.10008.5.1.4.1.1.88.22',
  '1.2.840.10008.5.1.4.1.1.88.33',
  '1.2.840.10008.5.1.4.1.1.88.34',
  '1.2.840.10008.5.1.4.1.1.88.59', // Key Object Selection (the node's list of flagged images)
];

let services = null;
let panelElement = null;
let lastScoresFetch = 0;

function aiConfig() {
  return window.config?.aiAnomaly || {};
}

async function refreshScores(force = false) {
  if (!force && Date.now() - lastScoresFetch < 5000) return;
  lastScoresFetch = Date.now();
  const { scores, source } = await loadWorklistScores(aiConfig().scoresUrl ?? '/ainode/studies/scores');
  store.set({ scores, scoresSource: source });
}

/** Sort the list flagged-first when the user has not chosen an order (URL is the table's state). */
function defaultSortFlaggedFirst() {
  if (aiConfig().sortFlaggedFirst === false || window.location.pathname !== '/') return;
  const params = new URLSearchParams(window.location.search);
  if ([...params.keys()].some((k) => k.toLowerCase() === 'sortby')) return;
  params.set('sortBy', COLUMN_ID);
  params.set('sortDirection', 'descending');
  window.history.replaceState(window.history.state, '', `/?${params}`);
}

const cellCache = new Map();
function cellElement(studyUID) {
  if (!cellCache.has(studyUID)) {
    cellCache.set(
      studyUID,
      domHost(
        (node) => {
          const render = (s) => {
            const { text, title, level } = cellText(s.scores.get(studyUID));
            node.textContent = text;
            node.title = title;
            node.dataset.level = level;
            node.style.color = level === 'abnormal' ? '#f87171' : level === 'normal' ? '#86efac' : '#9ca3af';
            node.style.fontWeight = level === 'abnormal' ? '700' : '400';
          };
          render(store.get());
          return store.subscribe(render);
        },
        { className: 'truncate', 'data-testid': 'ai-anomaly-cell', 'data-study': studyUID },
      ),
    );
  }
  return cellCache.get(studyUID);
}

const headerMount = domHost(() => {
  refreshScores(); // the list is shown (again): one request for all rows
});

/** TanStack column definition of the "AI anomaly" study-list column. */
const aiColumn = {
  id: COLUMN_ID,
  accessorFn: (row) => store.get().scores.get(row.studyInstanceUid)?.score ?? null,
  sortingFn: (a, b) =>
    compareEntries(store.get().scores.get(a.original.studyInstanceUid), store.get().scores.get(b.original.studyInstanceUid)),
  sortDescFirst: true,
  enableSorting: true,
  enableColumnFilter: false,
  header: ({ column }) => {
    const sorted = column.getIsSorted();
    return h(
      'button',
      {
        type: 'button',
        className: 'flex items-center gap-1 text-left',
        'data-testid': 'ai-anomaly-header',
        title: 'Sort: flagged studies first',
        onClick: () => column.toggleSorting(sorted !== 'desc'),
      },
      'AI anomaly',
      sorted === 'desc' ? ' ▼' : sorted === 'asc' ? ' ▲' : '',
      headerMount,
    );
  },
  cell: ({ row }) => cellElement(row.original.studyInstanceUid),
  meta: { label: 'AI anomaly', minWidth: 110, headerClassName: 'min-w-[110px]', cellClassName: 'min-w-[110px]', priority: 95 },
};

/**
 * Insert the AI column after "Study Date" (or at the end).
 * @param {object[]} columns
 * @returns {object[]}
 */
export function withAiColumn(columns) {
  const cols = (Array.isArray(columns) ? columns : []).filter((c) => c?.id !== COLUMN_ID);
  const at = cols.findIndex((c) => c?.id === 'studyDateTime');
  cols.splice(at >= 0 ? at + 1 : cols.length, 0, aiColumn);
  return cols;
}

function hiddenDisplaySet(instances) {
  const inst = instances[0];
  return {
    displaySetInstanceUID: `ai-hidden-${inst.SeriesInstanceUID}`,
    SOPClassHandlerId: `${EXTENSION_ID}.sopClassHandlerModule.ai-hidden`,
    SOPClassUID: inst.SOPClassUID,
    StudyInstanceUID: inst.StudyInstanceUID,
    SeriesInstanceUID: inst.SeriesInstanceUID,
    SeriesNumber: inst.SeriesNumber,
    SeriesDescription: inst.SeriesDescription,
    SeriesDate: inst.SeriesDate,
    Modality: inst.Modality,
    instances,
    instance: inst,
    numImageFrames: 0,
    isDerivedDisplaySet: true,
    isReconstructable: false,
    excludeFromThumbnailBrowser: true,
    // Shown by this extension (panel, heat map), never by an OHIF viewport.
    isAiAnomalyHidden: true,
  };
}

async function onStudy(studyUID) {
  if (store.get().result.studyInstanceUID === studyUID && store.get().result.status !== 'error') return;
  store.set({ result: { status: 'loading', studyInstanceUID: studyUID } });
  try {
    const reports = await loadStudyReports(studyUID);
    store.set({ result: { status: reports.length ? 'ok' : 'none', studyInstanceUID: studyUID, reports } });
  } catch (err) {
    console.error('[ai-anomaly] SR', err);
    store.set({ result: { status: 'error', studyInstanceUID: studyUID, error: err.message } });
  }
  startHeatmap(studyUID);
}

const extension = {
  id: EXTENSION_ID,

  async preRegistration({ servicesManager }) {
    services = servicesManager.services;
    setServices(services);
    defaultSortFlaggedFirst();
    // Scores before the list first renders, so the first sort has them (bounded wait).
    await Promise.race([refreshScores(true), new Promise((r) => setTimeout(r, 3000))]);
  },

  getPanelModule() {
    return [
      {
        name: 'anomaly',
        id: 'anomaly',
        iconName: 'tab-segmentation',
        iconLabel: 'AI',
        label: 'AI anomaly',
        component: () => {
          if (!panelElement) panelElement = domHost((node) => mountPanel(node, services));
          return panelElement;
        },
      },
    ];
  },

  getSopClassHandlerModule() {
    return [
      {
        name: 'ai-hidden',
        sopClassUids: [SEG_SOP_CLASS_UID, ...SR_SOP_CLASS_UIDS],
        getDisplaySetsFromSeries: (instances) => {
          const hidden = instances.filter(isHiddenOutput);
          return hidden.length ? [hiddenDisplaySet(hidden)] : [];
        },
      },
    ];
  },

  getCustomizationModule() {
    const value = { 'workList.columns': { $apply: withAiColumn } };
    // OHIF's first-visit tour covers the viewport (and the AI overlay) until dismissed.
    if (aiConfig().showOhifTours !== true) value['ohif.tours'] = { $set: [] };
    return [{ name: 'global', value }];
  },

  onModeEnter({ servicesManager }) {
    services = servicesManager.services;
    setServices(services);
    const studies = new URLSearchParams(window.location.search).getAll('StudyInstanceUIDs').flatMap((s) => s.split(','));
    store.set({ result: { status: 'idle' }, heatmap: { status: 'none' }, region: { status: 'none' }, imageFailures: 0 });
    watchImageLoads();
    startRegion(services);
    if (studies[0]) onStudy(studies[0]);
  },

  onModeExit() {
    stopRegion();
    stopHeatmap();
    store.set({ result: { status: 'idle' } });
  },
};

export default extension;
