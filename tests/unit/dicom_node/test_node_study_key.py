"""A SOP Instance UID shared by two studies is keyed by study, not dropped (issue 21)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pydicom import dcmread

from dicom_node.config import NodeSettings
from dicom_node.index import StateIndex
from dicom_node.service import NodeService


def test_two_studies_sharing_a_sop_instance_uid_are_both_processed(
    settings: NodeSettings, kit, ct_path: Path, instances_dir: Path
) -> None:
    engine = kit.FakeEngine()
    node = NodeService(settings, engine)
    node.start()
    try:
        first = kit.new_instance(
            ct_path, study_uid="1.2.826.0.1.3680043.8.498.1", out_dir=instances_dir / "a"
        )
        ds = dcmread(first)
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
        second = instances_dir / "b.dcm"
        ds.save_as(second)
        assert kit.send_files(node.scp_port, [first]) == [0]
        deadline = time.monotonic() + 20
        while not engine.calls and time.monotonic() < deadline:
            time.sleep(0.1)
        assert kit.send_files(node.scp_port, [second]) == [0]
        while len(engine.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(engine.calls) == 2, "the second study's image was dropped"
        assert node.metrics.snapshot().get("duplicates_skipped_total", 0) == 0
    finally:
        node.stop()


def test_an_old_index_is_migrated_to_the_study_key(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE processed (
            sop_instance_uid TEXT NOT NULL, checkpoint TEXT NOT NULL,
            model_version TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
            job_id TEXT NOT NULL, state TEXT NOT NULL, updated_at TEXT NOT NULL,
            PRIMARY KEY (sop_instance_uid, checkpoint, model_version));
        INSERT INTO processed VALUES ('1.2.3', 'default-cxr', '1', '9.9', 'j1', 'done', 'x');
        """
    )
    db.commit()
    db.close()
    index = StateIndex(path)
    try:
        assert index.claimed(["1.2.3"], "default-cxr", "1", study_instance_uid="9.9") == {"1.2.3"}
        assert not index.claimed(["1.2.3"], "default-cxr", "1", study_instance_uid="9.8")
        index.claim("j2", "9.8", [("1.2.3", "default-cxr", "1")])  # no conflict across studies
        assert index.claimed(["1.2.3"], "default-cxr", "1") == {"1.2.3"}
    finally:
        index.close()
