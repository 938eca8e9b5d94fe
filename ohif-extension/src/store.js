// Tiny observable state shared by the panel, the overlays and the worklist column.

/**
 * Create a store.
 * @param {object} initial initial state
 * @returns {{get: () => object, set: (patch: object) => void, subscribe: (fn: Function) => () => void}}
 */
export function createStore(initial) {
  let state = { ...initial };
  const subs = new Set();
  return {
    get: () => state,
    set(patch) {
      state = { ...state, ...patch };
      for (const fn of [...subs]) {
        try {
          fn(state);
        } catch (err) {
          console.error('[ai-anomaly] subscriber failed', err);
        }
      }
    },
    subscribe(fn) {
      subs.add(fn);
      return () => subs.delete(fn);
    },
  };
}

/** The extension's state. */
export const store = createStore({
  // study result: {status: 'idle'|'loading'|'none'|'ok'|'error', studyInstanceUID, reports, error}
  result: { status: 'idle' },
  // heat map (fractional SEG) state: {status: 'none'|'loading'|'ok'|'error', message}
  heatmap: { status: 'none' },
  // images of the study the viewer could not load (the heat map is never drawn over them)
  imageFailures: 0,
  heatVisible: true,
  heatOpacity: 0.55,
  // binary SEG overlay: {status: 'none'|'loading'|'ok'|'error', segmentationId, message}
  region: { status: 'none' },
  regionVisible: true,
  // worklist: Map StudyInstanceUID -> entry, and where it came from
  scores: new Map(),
  scoresSource: 'none',
});
