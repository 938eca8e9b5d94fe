"""A real disk full under the SCP: nothing acknowledged is lost, nothing half-written stays.

The SCP runs in a child process whose ``data_dir`` is a 2 MiB tmpfs mounted in a mount
namespace of its own (``unshare -m``, so root or a user namespace is needed; skipped
otherwise). The test sends more instances than fit; the SCP must answer 0xA700 once the
disk is full, and every instance it answered 0x0000 for must be in the spool, complete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from pydicom import dcmread
    from dicom_node.config import NodeSettings
    from dicom_node.metrics import Metrics
    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool

    data_dir, port_file, done_file, result_file, mode = sys.argv[1:6]
    settings = NodeSettings(
        data_dir=Path(data_dir), port=0, http_port=0, allowed_calling_aes=["TESTSCU"],
        min_free_disk_mb=0, receive_mode=mode,
    )
    scp = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    scp.start()
    Path(port_file).write_text(str(scp.port))
    while not Path(done_file).exists():
        time.sleep(0.05)
    scp.stop()
    spooled, unreadable, leftovers = [], [], []
    for path in settings.spool_dir.rglob("*"):
        if path.is_dir():
            continue
        if path.suffix == ".dcm":
            try:
                spooled.append(str(dcmread(path).SOPInstanceUID))
                dcmread(path).pixel_array
            except Exception as exc:
                unreadable.append(f"{path.name}: {type(exc).__name__}")
        elif not path.name.startswith(".open-"):
            leftovers.append(path.name)
    Path(result_file).write_text(json.dumps(
        {"spooled": spooled, "unreadable": unreadable, "leftovers": leftovers}
    ))
    """
)


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt && umount /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.parametrize("mode", ["memory", "file"])
def test_disk_full_acknowledged_instances_are_kept(
    kit, ct_path: Path, tmp_path: Path, mode: str
) -> None:
    if not _can_mount_tmpfs():
        pytest.skip("needs unshare -m and mount (root or a user namespace)")
    data_dir = tmp_path / "small"
    data_dir.mkdir()
    port_file, done_file, result_file = (tmp_path / n for n in ("port", "done", "result"))
    script = (
        f'mount -t tmpfs -o size=2m,mode=0700 tmpfs "{data_dir}" && '
        f'exec "{sys.executable}" -c "$0" "$@"'
    )
    child = subprocess.Popen(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            script,
            CHILD,
            str(data_dir),
            str(port_file),
            str(done_file),
            str(result_file),
            mode,
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            assert child.poll() is None, "the SCP child exited"
            assert time.monotonic() < deadline, "the SCP child did not start"
            time.sleep(0.05)
        study = generate_uid()
        files = [kit.new_instance(ct_path, study, tmp_path / "in") for _ in range(150)]
        statuses = kit.send_files(int(port_file.read_text()), files)  # 150 x 39 KB > 2 MiB
        done_file.touch()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    result = json.loads(result_file.read_text())
    acked = {str(f.stem) for f, status in zip(files, statuses, strict=True) if status == 0x0000}
    assert 0 < len(acked) < len(files), statuses  # the disk did fill up
    assert set(statuses) == {0x0000, 0xA700}, set(statuses)
    assert acked <= set(result["spooled"]), "acknowledged, then lost"
    assert result["unreadable"] == []
    assert result["leftovers"] == []  # no temporary file of a refused instance
