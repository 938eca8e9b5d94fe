"""dicom_node: the PACS-facing service (Storage SCP, spool, jobs, results back to the PACS).

It imports ai_engine (and so torch) only inside its worker.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
