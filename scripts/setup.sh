#!/usr/bin/env bash
# Install what the project needs, idempotently (fast when everything is there):
#   Debian packages (Orthanc + plugins, dcmtk, dicom3tools, chromium, iproute2; Node.js if missing),
#   the virtualenv .venv/ (torch pinned to 2.13.0), the OHIF extension's npm packages and,
#   with --viewer, the prebuilt OHIF viewer.
# Used by scripts/run.sh and scripts/test.sh; can be run alone: scripts/setup.sh [--viewer]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

want_viewer=0
for arg in "$@"; do
  case "$arg" in
    --viewer) want_viewer=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------------------------
APT_PACKAGES=(orthanc orthanc-dicomweb orthanc-python dcmtk dicom3tools chromium iproute2 redis-server)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Python virtualenv -----------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  log "creating .venv/"
  python3 -m venv .venv
fi
# Re-install only when pyproject.toml changed since the last successful install.
stamp=".venv/.ai-node-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "pip install -e .[test,brain] (torch pinned to 2.13.0)"
  # torch is pinned in the same command: otherwise monai pulls the newest torch with GBs of CUDA.
  # (The grep hides this machine's harmless "Location 'file:///…' is ignored" pip.conf noise;
  # with pipefail the pipeline still fails when pip does.)
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[test,brain]" "torch==2.13.0" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > "$stamp"
fi

# --- OHIF extension: npm packages and the viewer ---------------------------------------------
if [ -f ohif-extension/package.json ]; then
  if [ ! -d ohif-extension/node_modules ] \
     || { [ -f ohif-extension/package-lock.json ] \
          && [ ohif-extension/package-lock.json -nt ohif-extension/node_modules/.package-lock.json ]; }; then
    log "npm install in ohif-extension/"
    if [ -f ohif-extension/package-lock.json ]; then
      npm --prefix ohif-extension ci --no-audit --no-fund --loglevel=error
    else
      npm --prefix ohif-extension install --no-audit --no-fund --loglevel=error
    fi
  fi
  if [ "$want_viewer" -eq 1 ] && [ -f ohif-extension/scripts/setup.mjs ]; then
    npm --prefix ohif-extension run --silent setup
  fi
  if [ -f ohif-extension/scripts/build.mjs ]; then
    npm --prefix ohif-extension run --silent build >/dev/null
  fi
fi
