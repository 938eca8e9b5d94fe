"""The spool scan the router runs every poll: what it reports stays exact across scans.

`Spool.scan` remembers each instance file it has seen, to stat only new files; these tests
check that the study it reports (files, first arrival, markers) is what the folder holds now,
through arrivals, re-sends, removals and a study routed and received again.
"""

from __future__ import annotations

import os
from pathlib import Path

from dicom_node.fsutil import write_durable
from dicom_node.spool import Spool, SpooledStudy

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _at(path: Path, when: float) -> None:
    os.utime(path, (when, when))


def _only(spool: Spool) -> SpooledStudy:
    studies = spool.scan()
    assert len(studies) == 1
    return studies[0]


def test_scan_tracks_arrivals_resends_and_removals(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    a = spool.store(STUDY, "1.2.3.1", b"a")
    b = spool.store(STUDY, "1.2.3.2", b"b")
    _at(a, 1000.0)
    _at(b, 2000.0)
    study = _only(spool)
    assert study.files == (a, b)
    assert study.first_arrival == 1000.0

    c = spool.store(STUDY, "1.2.3.0", b"c")  # sorts first
    _at(c, 3000.0)
    study = _only(spool)
    assert study.files == (c, a, b)
    assert study.first_arrival == 1000.0

    # the peer sends instance a again: a new file replaces it, with its own arrival time
    write_durable(a, b"a again")
    _at(a, 4000.0)
    assert _only(spool).first_arrival == 2000.0

    b.unlink()
    study = _only(spool)
    assert study.files == (c, a)
    assert study.first_arrival == 3000.0

    spool.mark_open(STUDY, "assoc1")
    (study.path / ".process-now").touch()
    study = _only(spool)
    assert (study.open_associations, study.process_now) == (1, True)


def test_a_study_routed_then_received_again_is_listed_afresh(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.store(STUDY, "1.2.3.1", b"x")
    _at(first, 1000.0)
    study = _only(spool)
    first.unlink()  # the router took the instance into a job ...
    spool.remove_if_empty(study.path)  # ... and cleared the folder
    assert spool.scan() == []

    again = spool.store(STUDY, "1.2.3.1", b"x")  # same instance, sent again later
    _at(again, 5000.0)
    study = _only(spool)
    assert study.files == (again,)
    assert study.first_arrival == 5000.0
    assert spool.pending_count() == 1
