"""ai_engine: unsupervised anomaly detection on DICOM images, DICOM results out.

The engine is a library: a folder of DICOM files in, DICOM SEG/SR files out
(`ai_engine.pipeline.run`). It never talks to the network.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
