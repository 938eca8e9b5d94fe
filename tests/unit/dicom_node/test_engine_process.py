"""The engine in a child process: results, errors, a crash, a hang, the node's own death."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from ai_engine.errors import AiEngineError
from dicom_node.config import NodeSettings
from dicom_node.engine_process import EngineProcess, EngineProcessError
from dicom_node.queue import JobQueue, JobStateValues
from dicom_node.service import NodeService

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def child_engines_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child gets the node's sys.path; ``child_engines`` lives next to this file."""
    monkeypatch.syspath_prepend(str(HERE))


@pytest.fixture
def study_dir(kit, ct_path: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    kit.new_instance(ct_path, generate_uid(), folder)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    return status != "Z"


def test_results_come_back_and_the_child_is_reused(study_dir: Path, tmp_path: Path) -> None:
    engine = EngineProcess("child_engines:run")
    (tmp_path / "out1").mkdir()
    (tmp_path / "out2").mkdir()
    try:
        first = engine(study_dir, tmp_path / "out1", ["m"])
        second = engine(study_dir, tmp_path / "out2", ["m"])
    finally:
        engine.close()
    assert first[0].score == pytest.approx(0.7)
    assert first[0].engine_pid != os.getpid()  # it ran elsewhere
    assert second[0].engine_pid == first[0].engine_pid  # one child, models kept loaded
    assert (tmp_path / "out1" / first[0].files[0]).is_file()
    assert engine.starts == 1
    assert engine.pid is None  # closed


def test_engine_errors_keep_their_kind(study_dir: Path, tmp_path: Path) -> None:
    bad = EngineProcess("child_engines:bad_input")
    broken = EngineProcess("child_engines:broken")
    try:
        with pytest.raises(AiEngineError, match="UnsupportedInputError: no readable DICOM"):
            bad(study_dir, tmp_path, ["m"])  # deterministic: the worker dead-letters it
        with pytest.raises(EngineProcessError, match="MemoryError: out of memory"):
            broken(study_dir, tmp_path, ["m"])  # anything else: retryable
        assert bad.starts == 1  # the child survives its errors
        assert broken.starts == 1
    finally:
        bad.close()
        broken.close()


def test_a_crashed_child_fails_the_call_and_the_next_call_starts_a_new_one(
    study_dir: Path, tmp_path: Path
) -> None:
    engine = EngineProcess("child_engines:die")
    try:
        with pytest.raises(EngineProcessError, match="died \\(exit status 3\\)"):
            engine(study_dir, tmp_path, ["m"])
        engine.target = "child_engines:run"
        (tmp_path / "again").mkdir()
        results = engine(study_dir, tmp_path / "again", ["m"])
    finally:
        engine.close()
    assert results[0].score == pytest.approx(0.7)
    assert engine.starts == 2


def test_a_hung_child_is_killed_after_the_timeout(study_dir: Path, tmp_path: Path) -> None:
    engine = EngineProcess("child_engines:hang", timeout_seconds=1.0)
    engine.start()
    pid = engine.pid
    assert pid is not None
    try:
        with pytest.raises(EngineProcessError, match="longer than 1 s"):
            engine(study_dir, tmp_path, ["m"])
        assert not _alive(pid)
    finally:
        engine.close()


def test_the_child_leaves_when_the_node_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        from dicom_node.engine_process import EngineProcess
        engine = EngineProcess("child_engines:hang")
        engine.start()
        print(engine.pid, flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()  # kill -9: no clean-up code runs in the node
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def test_node_runs_its_engine_in_a_child_and_retries_after_a_crash(
    kit, settings: NodeSettings, destination, ct_path: Path, instances_dir: Path
) -> None:
    settings.destination = "cstore"
    settings.cstore_port = destination.port
    settings.study_quiet_seconds = 0.2
    settings.process_backoff_seconds = 0.1
    settings.worker_engine = "child_engines:die"
    node = NodeService(settings)  # no engine injected: the node's own, isolated
    node.start()
    try:
        path = kit.new_instance(ct_path, generate_uid(), instances_dir)
        assert kit.send_files(node.scp_port, [path]) == [0]
        queue = JobQueue(settings.jobs_dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            j.attempts for j in queue.iter_jobs(JobStateValues.QUEUED)
        ):
            time.sleep(0.05)
        # the engine died; the node did not, and its SCP still answers
        another = kit.new_instance(ct_path, None, instances_dir)
        assert kit.send_files(node.scp_port, [another]) == [0]
        assert node.metrics.snapshot().get("process_retries_total", 0) >= 1
    finally:
        node.stop()


def test_two_engine_processes_analyse_two_studies_side_by_side(
    kit,
    settings: NodeSettings,
    destination,
    ct_path: Path,
    instances_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "engine.log"
    monkeypatch.setenv("CHILD_ENGINE_LOG", str(log))
    settings.destination = "cstore"
    settings.cstore_port = destination.port
    settings.study_quiet_seconds = 0.2
    settings.worker_engine = "child_engines:logged"
    settings.engine_processes = 2
    node = NodeService(settings)
    node.start()
    try:
        files = [kit.new_instance(ct_path, generate_uid(), instances_dir) for _ in range(2)]
        assert kit.send_files(node.scp_port, files) == [0, 0]
        assert node.wait_until_idle(timeout=60)
    finally:
        node.stop()
    runs = sorted(
        (float(start), float(end), pid)
        for start, end, pid in (line.split() for line in log.read_text().splitlines())
    )
    assert len(runs) == 2
    assert len({pid for _, _, pid in runs}) == 2  # one study in each process
    assert runs[1][0] < runs[0][1]  # and at the same time
    assert len(destination.received) == 2
