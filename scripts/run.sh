#!/usr/bin/env bash
# The README's run command: set everything up (idempotent), then run the embedded default
# (Orthanc + AI node + OHIF viewer) on this host and send the sample studies through it.
# Arguments go to `python -m dicom_node demo` (see --help), e.g. scripts/run.sh --no-samples
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --viewer
exec .venv/bin/python -m dicom_node demo "$@"
