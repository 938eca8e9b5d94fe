#!/usr/bin/env bash
# The README's test command (and CI's): install what the tests need (idempotent), then
# ruff (lint + format), mypy, pytest (unit + integration + browser) and the extension's
# `node --test`. pytest and node run inside a loopback-only network namespace (unshare -n),
# because Orthanc 1.10 cannot bind a single address. Extra arguments go to pytest.
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$self")/.."

if [ "${AI_NODE_TEST_NETNS:-}" != "1" ]; then
  t0=$SECONDS
  scripts/setup.sh --viewer
  echo "== ruff check";          .venv/bin/ruff check .
  echo "== ruff format --check"; .venv/bin/ruff format --check .
  echo "== mypy";                .venv/bin/mypy
  # Re-run this script in a new network namespace that has only lo (root: plain unshare -n;
  # otherwise a user namespace maps us to root inside it).
  userns=()
  if [ "$(id -u)" -ne 0 ]; then userns=(-r); fi
  rc=0
  AI_NODE_TEST_NETNS=1 unshare "${userns[@]}" -n "$self" "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "== all checks passed in $((SECONDS - t0)) s"
  else
    echo "== FAILED (exit $rc) after $((SECONDS - t0)) s"
  fi
  exit "$rc"
fi

# --- inside the network namespace ------------------------------------------------------------
ip link set lo up
marks="not gpu"
if [ -d ../shared/data ]; then
  echo "== ../shared/data found: tests marked 'data' included"
else
  echo "== NOTICE: ../shared/data not found: deselecting tests marked 'data'"
  marks="not gpu and not data"
fi
echo "== pytest (loopback-only network namespace)"
rc=0
.venv/bin/python -m pytest -m "$marks" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest: no tests were collected (exit 5); not a failure"
  rc=0
fi
js_rc=0
if [ -f ohif-extension/package.json ] && [ -d ohif-extension/tests ]; then
  echo "== node --test (ohif-extension)"
  (cd ohif-extension && node --test tests/) || js_rc=$?
fi
[ "$rc" -ne 0 ] && echo "== pytest failed (exit $rc)"
[ "$js_rc" -ne 0 ] && echo "== node --test failed (exit $js_rc)"
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$js_rc"
