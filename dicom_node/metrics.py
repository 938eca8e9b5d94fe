"""In-process counters for the Prometheus ``/metrics`` endpoint.

Counters count events since the process started (Prometheus handles resets); the gauges of
the ``/metrics`` endpoint (jobs per state, spooled instances) are read from the durable
state itself, so they are right after a restart too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

#: name -> help text of every counter; all are exported with the ``dicom_node_`` prefix.
COUNTERS: Mapping[str, str] = {
    "instances_received_total": "Instances received and spooled (C-STORE success).",
    "instances_rejected_total": "C-STORE requests answered with a failure status.",
    "own_outputs_ignored_total": "Instances recognised as the node's own outputs (acked, dropped).",
    "duplicates_skipped_total": "Instances already processed with the same checkpoint and version.",
    "associations_accepted_total": "Associations accepted.",
    "associations_rejected_total": "Associations rejected (AE titles, disk floor).",
    "jobs_queued_total": "Jobs created from completed studies.",
    "jobs_processed_total": "Jobs the engine finished.",
    "jobs_sent_total": "Jobs whose results were delivered (done).",
    "jobs_failed_total": "Jobs moved to failed (dead letter).",
    "process_retries_total": "Engine runs scheduled again after a failure.",
    "send_retries_total": "Deliveries scheduled again after a failure.",
    "instances_not_routed_total": "Instances no routing rule sent to a checkpoint (recorded).",
    "cleanup_removed_total": "Finished job folders, quarantined files and index rows removed.",
}


class Metrics:
    """Thread-safe monotonic counters named in `COUNTERS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(COUNTERS, 0)

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
) -> str:
    """Format metrics in the Prometheus text exposition format (version 0.0.4).

    Args:
        counters: counter values by `COUNTERS` name.
        jobs_by_state: current number of jobs per state folder.
        spooled_instances: instances waiting in the spool.

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
    return "\n".join(lines) + "\n"
