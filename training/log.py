"""Per-epoch training log: a CSV file always, TensorBoard event files when installed.

``<out>/logs/metrics.csv`` has one row per epoch (columns fixed by the first epoch; a value
missing later is left empty). With the ``train`` extra (``tensorboard``) the same scalars go
to ``<out>/logs/tensorboard/`` for ``tensorboard --logdir <out>/logs``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

logger = logging.getLogger(__name__)


class TrainingLog:
    """Write per-epoch scalars to CSV and, when available, TensorBoard.

    Use as a context manager::

        with TrainingLog(out / "logs") as log:
            log.epoch(0, {"loss": 0.1, "val_auroc": 0.7})
    """

    def __init__(self, folder: Path, tensorboard: bool = True) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = folder / "metrics.csv"
        self._columns: list[str] | None = None
        self._fh = self.csv_path.open("w", newline="")
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("tensorboard not installed: metrics go to %s only", self.csv_path)
            else:
                self._writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """Record the scalars of one epoch (NaN is written as empty in the CSV)."""
        row = {"epoch": epoch, **values}
        if self._columns is None:
            self._columns = list(row)
            csv.writer(self._fh).writerow(self._columns)
        csv.writer(self._fh).writerow(
            [_cell(row.get(c)) for c in self._columns]  # later-only keys are not added
        )
        self._fh.flush()
        if self._writer is not None:
            for name, value in values.items():
                if value is not None and math.isfinite(float(value)):
                    self._writer.add_scalar(name, float(value), epoch)
            self._writer.flush()

    def close(self) -> None:
        """Close the files."""
        self._fh.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return str(value)
