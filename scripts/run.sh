#!/usr/bin/env bash
# The README's run command: set everything up (idempotent), then run the development stack
# (Orthanc + AI node + OHIF viewer, package devstack/) on this host and send the sample
# studies through it. Arguments go to `python -m devstack` (see --help), e.g.
# scripts/run.sh --no-samples
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --viewer
exec .venv/bin/python -m devstack "$@"
