"""In-process counters for the Prometheus ``/metrics`` endpoint.

Counters count events since the process started (Prometheus handles resets); the gauges of
the ``/metrics`` endpoint (jobs per state, spooled instances) are read from the durable
state itself, so they are right after a restart too. Per-stage latencies are Prometheus
histograms (`HISTOGRAMS`): ``receive_to_queued`` (first instance of a study spooled -> its
job queued), ``run`` (one engine run) and ``send`` (one delivery attempt).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: name -> help text of every counter; all are exported with the ``dicom_node_`` prefix.
COUNTERS: Mapping[str, str] = {
    "instances_received_total": "Instances received and spooled (C-STORE success).",
    "instances_rejected_total": "C-STORE requests answered with a failure status.",
    "instances_refused_limits_total": (
        "C-STORE data sets refused for their structure (nesting, size, pixel data length)."
    ),
    "own_outputs_ignored_total": "Instances recognised as the node's own outputs (acked, dropped).",
    "duplicates_skipped_total": "Instances already processed with the same checkpoint and version.",
    "associations_accepted_total": "Associations accepted.",
    "associations_rejected_total": "Associations rejected (AE titles, disk floor).",
    "jobs_queued_total": "Jobs created from completed studies.",
    "jobs_processed_total": "Jobs the engine finished.",
    "jobs_sent_total": "Jobs whose results were delivered (done).",
    "jobs_failed_total": "Jobs moved to failed (dead letter).",
    "jobs_rerun_total": "Finished jobs queued again by POST /jobs/<id>/rerun.",
    "process_retries_total": "Engine runs scheduled again after a failure.",
    "send_retries_total": "Deliveries scheduled again after a failure.",
    "instances_not_routed_total": "Instances no routing rule sent to a checkpoint (recorded).",
    "instances_quarantined_total": "Spooled instances whose header could not be read (kept).",
    "cleanup_removed_total": "Finished job folders, quarantined files and index rows removed.",
    "feedback_received_total": "Reader judgements stored (every version).",
    "feedback_sent_total": "Review SRs of reader judgements delivered to the PACS.",
}

#: Upper bounds (seconds) of the latency histogram buckets; ``+Inf`` is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0
)  # fmt: skip

#: name -> help text of every histogram (seconds), exported as ``dicom_node_<name>``.
HISTOGRAMS: Mapping[str, str] = {
    "receive_to_queued_seconds": "From the first instance of a study spooled to its job queued.",
    "run_seconds": "One engine run of a job (successful or not).",
    "send_seconds": "One delivery attempt of a job's results (successful or not).",
    "engine_read_seconds": "Engine, per study and model: reading headers and pixels.",
    "engine_preprocess_seconds": "Engine, per study and model: model input transforms.",
    "engine_infer_seconds": "Engine, per study and model: network, anomaly map and score.",
    "engine_write_seconds": "Engine, per study and model: DICOM writers (SEG, map, SR) and files.",
}

#: engine stage (``StudyResult.seconds`` key) -> histogram name.
ENGINE_STAGES: Mapping[str, str] = {
    "read": "engine_read_seconds",
    "preprocess": "engine_preprocess_seconds",
    "infer": "engine_infer_seconds",
    "write": "engine_write_seconds",
}


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram's state.

    Attributes:
        buckets: upper bounds, ascending (without ``+Inf``).
        counts: observations per bucket (not cumulative), one more than ``buckets`` (+Inf).
        total: sum of the observed values.
    """

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)


class Metrics:
    """Thread-safe monotonic counters named in `COUNTERS` and histograms named in `HISTOGRAMS`.

    Args:
        buckets: histogram bucket upper bounds in seconds (ascending).
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._buckets = tuple(sorted(buckets))
        self._hist_counts: dict[str, list[int]] = {
            name: [0] * (len(self._buckets) + 1) for name in HISTOGRAMS
        }
        self._hist_sums: dict[str, float] = dict.fromkeys(HISTOGRAMS, 0.0)

    def observe(self, name: str, seconds: float) -> None:
        """Record one latency in the histogram ``name``.

        Args:
            name: a key of `HISTOGRAMS`.
            seconds: the latency; negative or non-finite values (clock steps) count as 0.

        Raises:
            KeyError: unknown histogram name (a programming error).
        """
        if name not in self._hist_counts:
            raise KeyError(f"unknown histogram {name!r}")
        value = seconds if math.isfinite(seconds) and seconds > 0 else 0.0
        slot = bisect.bisect_left(self._buckets, value)  # first bucket with bound >= value
        with self._lock:
            self._hist_counts[name][slot] += 1
            self._hist_sums[name] += value

    def histograms(self) -> dict[str, HistogramSnapshot]:
        """A copy of all histograms."""
        with self._lock:
            return {
                name: HistogramSnapshot(
                    self._buckets, tuple(self._hist_counts[name]), self._hist_sums[name]
                )
                for name in HISTOGRAMS
            }

    def inc(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``.

        Args:
            name: a key of `COUNTERS`.
            amount: non-negative increment.

        Raises:
            KeyError: unknown counter name (a programming error).
        """
        if name not in self._values:
            raise KeyError(f"unknown counter {name!r}")
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> dict[str, int]:
        """A copy of all counters."""
        with self._lock:
            return dict(self._values)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prometheus(
    counters: Mapping[str, int],
    jobs_by_state: Mapping[str, int],
    spooled_instances: int,
    histograms: Mapping[str, HistogramSnapshot] | None = None,
    feedback: Sequence[Mapping[str, object]] | None = None,
) -> str:
    """Format metrics in the Prometheus text exposition format (version 0.0.4).

    Args:
        counters: counter values by `COUNTERS` name.
        jobs_by_state: current number of jobs per state folder.
        spooled_instances: instances waiting in the spool.
        histograms: latency histograms by `HISTOGRAMS` name (None: not exported).
        feedback: per model version agreement and drift (`feedback_lines`; None: none).

    Returns:
        The exposition text, ending with a newline.
    """
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        full = f"dicom_node_{name}"
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} counter"]
        lines.append(f"{full} {counters.get(name, 0)}")
    lines += [
        "# HELP dicom_node_jobs Jobs currently in each state.",
        "# TYPE dicom_node_jobs gauge",
    ]
    for state, count in sorted(jobs_by_state.items()):
        lines.append(f'dicom_node_jobs{{state="{_escape_label(state)}"}} {count}')
    lines += [
        "# HELP dicom_node_spooled_instances Instances waiting for their study to complete.",
        "# TYPE dicom_node_spooled_instances gauge",
        f"dicom_node_spooled_instances {spooled_instances}",
    ]
    for name, hist in (histograms or {}).items():
        lines += _histogram_lines(f"dicom_node_{name}", HISTOGRAMS.get(name, name), hist)
    if feedback is not None:
        lines += feedback_lines(feedback)
    return "\n".join(lines) + "\n"


#: name -> help text of the per-model-version feedback gauges (labels model, version).
FEEDBACK_GAUGES: Mapping[str, str] = {
    "studies": "Studies a reader judged (the latest judgement of each counts).",
    "agreement_rate": "Share of judged studies where the reader agreed with the node.",
    "false_alarm_rate": "Share of judged flagged studies the reader called a false alarm.",
    "missed_findings": "Judged studies not flagged that the reader called a missed finding.",
    "confirmed_normals": "Studies the reader confirmed normal (drift sample size).",
    "drift_ks": (
        "Kolmogorov-Smirnov D between the scores of reader-confirmed normals and the "
        "calibration set's healthy scores (0 same, 1 disjoint)."
    ),
    "drift_alert": "1 when drift_ks is above feedback_drift_alert_ks with enough normals.",
}


def feedback_lines(summary: Sequence[Mapping[str, object]]) -> list[str]:
    """Prometheus lines of `dicom_node.feedback.summarise`.

    A value that is unknown (e.g. a rate without studies) is left out rather than exported
    as a made-up number.

    Args:
        summary: one mapping per (model, version).

    Returns:
        Exposition lines (HELP, TYPE, samples) of `FEEDBACK_GAUGES`.
    """
    lines: list[str] = []
    for name, help_text in FEEDBACK_GAUGES.items():
        full = f"dicom_node_feedback_{name}"
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge"]
        for row in summary:
            drift = row.get("drift")
            source: Mapping[str, object] = row
            key = name
            if name.startswith("drift_") and isinstance(drift, Mapping):
                source, key = drift, name.removeprefix("drift_")
            value = source.get(key)
            if value is None or isinstance(value, str | Mapping):
                continue
            labels = (
                f'model="{_escape_label(str(row["model"]))}",'
                f'version="{_escape_label(str(row["model_version"]))}"'
            )
            number = float(value) if isinstance(value, int | float) else float("nan")
            lines.append(f"{full}{{{labels}}} {number:g}")
    return lines


def _histogram_lines(full: str, help_text: str, hist: HistogramSnapshot) -> list[str]:
    lines = [f"# HELP {full} {help_text}", f"# TYPE {full} histogram"]
    cumulative = 0
    for bound, count in zip(hist.buckets, hist.counts, strict=False):
        cumulative += count
        lines.append(f'{full}_bucket{{le="{bound:g}"}} {cumulative}')
    lines.append(f'{full}_bucket{{le="+Inf"}} {hist.count}')
    lines.append(f"{full}_sum {hist.total:.6f}")
    lines.append(f"{full}_count {hist.count}")
    return lines
