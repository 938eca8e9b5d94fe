// OHIF 3.13 does not expose React to run-time extensions, so we build React-18 element objects
// by hand. Host elements ('div', 'span', ...) with plain props and string children work as in
// JSX; for anything stateful we hand React an empty <div> and render vanilla DOM into it from the
// ref callback. Tied to React 18's element shape: @ohif/app is pinned and the e2e test guards it.
const REACT_ELEMENT = Symbol.for('react.element');

/**
 * Create a React element object (like React.createElement) for a host element.
 * @param {string} type tag name
 * @param {object|null} props props (className, style, onClick, data-*), may hold `key`/`ref`
 * @param {...*} children strings, numbers or elements
 * @returns {object} React element
 */
export function h(type, props, ...children) {
  const { key = null, ref = null, ...rest } = props || {};
  const kids = children.flat().filter((c) => c !== null && c !== undefined && c !== false);
  if (kids.length === 1) rest.children = kids[0];
  else if (kids.length > 1) rest.children = kids;
  return { $$typeof: REACT_ELEMENT, type, key: key === null ? null : String(key), ref, props: rest, _owner: null, _store: {} };
}

/**
 * An element whose content is rendered by `mount(node)` into a <div>; `mount` may return a
 * cleanup function, called when React detaches the node. Reuse the returned element across
 * renders (same object) so React does not re-run the ref.
 * @param {(node: HTMLElement) => (void|(() => void))} mount
 * @param {object} [props] props of the <div>
 * @returns {object} React element
 */
export function domHost(mount, props = {}) {
  let cleanup = null;
  const ref = (node) => {
    if (cleanup) {
      try {
        cleanup();
      } finally {
        cleanup = null;
      }
    }
    if (node) cleanup = mount(node) || null;
  };
  return h('div', { ...props, ref });
}
