"""devstack: the development and demo stack (Orthanc + the node + the OHIF viewer) on one host.

Not part of what a hospital deploys (``dicom_node``): it runs from a checkout, reads the
sample studies under ``tests/data/dicom`` and the Orthanc template under ``orthanc/``, and
is what ``scripts/run.sh``, the integration tests and the benchmarks start. It uses the
product's own pieces: `dicom_node.service.NodeService`, the C-STORE client
`dicom_node.sender.CStoreSender`, the index's study scores and
`dicom_node.credentials.load_or_create_secrets`.

Modules: `devstack.orthanc` (configuration and process of the Debian Orthanc),
`devstack.processes` (process groups, free ports, the loopback-only namespace check),
`devstack.stack` (`EmbeddedStack`: Orthanc, node and viewer started and stopped together),
`devstack.demo` (sample studies, the ``python -m devstack`` command line and its banner).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.errors import DicomNodeError

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Repository root (devstack runs from a checkout).
REPO_ROOT = Path(__file__).resolve().parent.parent


class EmbeddedError(DicomNodeError):
    """A part of the development stack could not be started or did not become healthy."""
