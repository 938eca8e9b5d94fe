"""YAML routing rules: validation with line numbers, matching, and the node routing by them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.errors import ConfigError, SendError
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStateValues, new_job_id
from dicom_node.router import NOT_ROUTED, RouteDecision, Router
from dicom_node.rules import RulesError
from dicom_node.rules_file import build_rules, load_rules
from dicom_node.sender import Outbox
from dicom_node.service import NodeService
from dicom_node.spool import Spool, SpooledStudy

EXAMPLE = Path(__file__).resolve().parents[3] / "dicom_node" / "rules.example.yaml"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"


def header(**values: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = values.pop("SOPClassUID", CR_CLASS)
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


# --------------------------------------------------------------------------- the example


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_example_routes_chest_brain_and_nothing_else() -> None:
    rules = load_rules(EXAMPLE)
    chest = rules.decide(header(Modality="CR", BodyPartExamined="CHEST"))
    assert chest.checkpoints == ("default-cxr",)
    assert chest.rule == "chest-radiograph"
    assert chest.destinations == ()  # [default] is the node's own destination
    # case-insensitive code strings, and "" for a missing body part
    assert rules.decide(header(Modality="dx", BodyPartExamined="Chest")).checkpoints == (
        "default-cxr",
    )
    assert rules.decide(header(Modality="DX")).checkpoints == ("default-cxr",)
    brain = rules.decide(header(Modality="MR", BodyPartExamined="HEAD"))
    assert brain.checkpoints == ("default-brain",)
    assert brain.quiet_seconds == 30
    # higher priority wins: a chest localizer is skipped
    skip = rules.decide(
        header(Modality="CR", BodyPartExamined="CHEST", SeriesDescription="Scout AP")
    )
    assert skip == RouteDecision((), (), "skip-localizers", None)
    # fallback: not processed
    other = rules.decide(header(Modality="CT", BodyPartExamined="ABDOMEN"))
    assert other.checkpoints == ()
    assert other.rule == "fallback"
    # the node's own outputs never match
    assert rules.decide(header(SOPClassUID=SEG_CLASS, Modality="CR")) is NOT_ROUTED
    assert rules.checkpoint_names == ["default-cxr", "default-brain"]
    assert rules.has_route_quiet_periods


def test_sop_class_and_calling_ae_and_priority_ties(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - name: first
            priority: 5
            match: {CallingAETitle: [MODALITY1], SOPClassUID: 1.2.840.10008.5.1.4.1.1.1}
            checkpoints: [a]
          - name: second
            priority: 5
            match: {CallingAETitle: [MODALITY1]}
            checkpoints: [b]
          - name: catch-all
            match: {}
            checkpoints: [c]
        fallback: {checkpoints: []}
        """,
    )
    rules = load_rules(path)
    assert rules.decide(header(), "MODALITY1").rule == "first"
    assert rules.decide(header(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), "MODALITY1").rule == (
        "second"
    )
    assert rules.decide(header(), "OTHER").rule == "catch-all"
    assert rules.decide(header(), None).rule == "catch-all"


# --------------------------------------------------------------------------- validation


def test_errors_name_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        rules:
          - name: chest
            match:
              Modalty: CR
              SeriesDescription: "([unclosed"
            checkpoints: [Default_CXR]
            destinations: [nowhere]
            quiet_seconds: -1
          - name: chest
            priority: high
            match: {}
            checkpoints: [x]
            colour: red
        """,
    )
    with pytest.raises(RulesError) as info:
        load_rules(path)
    errors = info.value.errors
    text = "\n".join(errors)
    expected = {
        "Modalty": "unknown attribute 'Modalty' (did you mean 'Modality'?)",
        "([unclosed": "SeriesDescription: invalid regular expression",
        "Default_CXR": "invalid checkpoint name 'Default_CXR'",
        "nowhere": "unknown destination 'nowhere'",
        "quiet_seconds": "quiet_seconds must be >= 0",
        "priority: high": "priority must be an integer",
        "colour": "unknown key 'colour'",
    }
    for needle, message in expected.items():
        prefix = f"{path}:{line_of(path, needle)}: "
        assert any(e.startswith(prefix) and message in e for e in errors), (needle, text)
    assert any("rule name 'chest' is used twice" in e for e in errors), text
    assert any(e.startswith(f"{path}:1: ") and "'fallback' is required" in e for e in errors)
    # a ConfigError: the service's startup path reports it and exits
    assert isinstance(info.value, ConfigError)


def test_yaml_syntax_error_and_duplicate_keys_name_the_line(tmp_path: Path) -> None:
    broken = write(tmp_path, "rules:\n  - name: a\n    match: {Modality: [CR\nfallback: {}\n")
    with pytest.raises(RulesError) as info:
        load_rules(broken)
    assert info.value.errors[0].startswith(f"{broken}:")
    assert "not valid YAML" in info.value.errors[0]
    dup = write(
        tmp_path,
        """
        rules:
          - name: a
            match: {Modality: CR}
            checkpoints: [a]
            checkpoints: [b]
        fallback: {checkpoints: []}
        """,
        "dup.yaml",
    )
    with pytest.raises(RulesError, match=rf"{dup}:5: rule: 'checkpoints' is given twice"):
        load_rules(dup)


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        rules: !!python/object/apply:os.system ["true"]
        fallback: {checkpoints: []}
        """,
    )
    with pytest.raises(RulesError, match=r"rules.yaml:1: tag .*python/object/apply.* not allowed"):
        load_rules(path)


def test_destinations_are_validated_and_read_secrets(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    path = write(
        tmp_path,
        f"""
        destinations:
          research:
            type: dicomweb
            url: http://127.0.0.1:9/dicom-web/
            token_file: {token}
          archive: {{type: cstore, host: 127.0.0.1, port: 104, ae_title: ARCHIVE}}
          broken: {{type: cstore, host: 127.0.0.1}}
          default: {{type: cstore, host: h, port: 1, ae_title: X}}
        rules:
          - name: all
            match: {{}}
            checkpoints: [default-cxr]
            destinations: [default, research, archive]
        fallback: {{checkpoints: []}}
        """,
    )
    with pytest.raises(RulesError) as info:
        load_rules(path)
    text = "\n".join(info.value.errors)
    assert f"{path}:{line_of(path, 'broken:')}: destination 'broken': 'port' is required" in text
    assert f"{path}:{line_of(path, 'default:')}: destination name 'default' is reserved" in text
    path.write_text(
        "\n".join(
            line
            for line in path.read_text().splitlines()
            if "broken" not in line and "default: {" not in line
        )
    )
    rules = load_rules(path)
    research = rules.destinations["research"]
    assert research.url == "http://127.0.0.1:9/dicom-web"
    assert research.token == "s3cret"
    assert "s3cret" not in repr(research)
    assert rules.rules[0].decision.destinations == ("default", "research", "archive")


def test_build_rules_without_file_is_the_default(settings: NodeSettings, tmp_path: Path) -> None:
    rules = build_rules(settings)
    assert rules.decide(header(Modality="CT")).checkpoints == ("default-cxr",)
    settings.rules_file = write(
        tmp_path,
        """
        rules:
          - {name: slow, match: {}, checkpoints: [a], quiet_seconds: 100}
        fallback: {checkpoints: []}
        """,
    )
    settings.study_max_wait_seconds = 50
    with pytest.raises(RulesError, match="quiet_seconds 100 is longer than"):
        build_rules(settings)


def test_service_refuses_to_start_with_invalid_rules(
    kit, settings: NodeSettings, tmp_path: Path
) -> None:
    settings.rules_file = write(tmp_path, "rules: []\nfallback: {checkpoints: [Bad Name]}\n")
    with pytest.raises(ConfigError, match=r"rules.yaml:2: fallback: invalid checkpoint name"):
        NodeService(settings, kit.FakeEngine())
    settings.rules_file = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        NodeService(settings, kit.FakeEngine())


# --------------------------------------------------------------------------- the router


def test_route_quiet_period_is_the_longest_of_the_study(
    kit, tmp_path: Path, ct_path: Path, mr_path: Path
) -> None:
    path = write(
        tmp_path,
        """
        rules:
          - {name: ct, match: {Modality: CT}, checkpoints: [a], quiet_seconds: 5}
          - {name: mr, match: {Modality: MR}, checkpoints: [b], quiet_seconds: 50}
        fallback: {checkpoints: []}
        """,
    )
    spool = Spool(tmp_path / "spool")
    router = Router(
        spool,
        JobQueue(tmp_path / "jobs"),
        StateIndex(tmp_path / "state.sqlite3"),
        Metrics(),
        quiet_seconds=1.0,
        max_wait_seconds=100.0,
        rules=load_rules(path),
        quarantine_dir=tmp_path / "quarantine",
    )
    study = generate_uid()
    folder = spool.study_dir(study)
    ct = kit.new_instance(ct_path, study, folder)

    def scanned() -> SpooledStudy:
        return next(s for s in spool.scan() if s.path == folder)

    assert ct.parent == folder
    assert router.quiet_seconds(scanned()) == 5
    now = scanned().last_activity
    assert router.completion_reason(scanned(), now + 2) is None
    assert router.completion_reason(scanned(), now + 6) == "quiet"
    kit.new_instance(mr_path, study, folder)
    assert router.quiet_seconds(scanned()) == 50


def test_node_routes_by_rules_records_not_routed_and_delivers_to_named_destination(
    kit, settings: NodeSettings, destination, tmp_path: Path, ct_path: Path, mr_path: Path
) -> None:
    settings.rules_file = write(
        tmp_path,
        f"""
        destinations:
          research: {{type: cstore, host: 127.0.0.1, port: {destination.port},
                      ae_title: ORTHANC}}
        rules:
          - name: ct-from-testscu
            match: {{Modality: CT, CallingAETitle: [{kit.CALLING_AE}]}}
            checkpoints: [ct-model]
            destinations: [research]
          - name: ct-from-elsewhere
            match: {{Modality: CT}}
            checkpoints: [other-model]
        fallback: {{checkpoints: []}}
        """,
    )
    engine = kit.FakeEngine()
    node = NodeService(settings, engine, sender=_Unused())
    node.start()
    try:
        study = generate_uid()
        instances = tmp_path / "instances"
        ct = kit.new_instance(ct_path, study, instances)
        mr = kit.new_instance(mr_path, study, instances)
        assert kit.send_files(node.scp_port, [ct, mr]) == [0, 0]
        assert node.wait_until_idle(timeout=20)
    finally:
        node.stop()
    assert engine.calls == [([str(dcmread(ct).SOPInstanceUID)], ["ct-model"])]
    done = list(JobQueue(settings.jobs_dir).iter_jobs(JobStateValues.DONE))
    assert len(done) == 1
    assert done[0].destinations == ["research"]
    assert done[0].delivered_to == ["research"]
    assert len(destination.received) == 1  # the SR, at the named destination only
    index = StateIndex(settings.state_db)
    try:
        assert index.not_routed(study) == {str(dcmread(mr).SOPInstanceUID): "fallback"}
    finally:
        index.close()


class _Unused:
    def send(self, files: object) -> None:
        raise AssertionError("the default destination must not be used")


class _Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[int] = []

    def send(self, files: list[Path]) -> None:
        if self.failures:
            self.failures -= 1
            raise SendError("down", retryable=True)
        self.sent.append(len(files))


def test_outbox_retries_only_the_destination_that_failed(
    settings: NodeSettings, tmp_path: Path
) -> None:
    queue = JobQueue(tmp_path / "jobs")
    index = StateIndex(tmp_path / "state.sqlite3")
    job = Job(
        job_id=new_job_id(),
        study_instance_uid=generate_uid(),
        checkpoints=["c"],
        destinations=["default", "second"],
    )
    folder = queue.stage(job)
    out = Dataset()
    out.SOPClassUID = CR_CLASS
    out.SOPInstanceUID = generate_uid()
    out.file_meta = FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = CR_CLASS
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    out.save_as(folder / "output" / "r.dcm", enforce_file_format=True)
    queue.commit(job)
    queue.move(job, JobStateValues.SENDING)
    first, second = _Flaky(0), _Flaky(1)
    settings.send_backoff_seconds = 0
    outbox = Outbox(settings, queue, index, Metrics(), first, senders={"second": second})
    assert outbox.run_once()
    assert first.sent == [1]
    assert second.sent == []
    assert outbox.run_once()
    assert first.sent == [1]  # not sent again
    assert second.sent == [1]
    done = queue.load(JobStateValues.DONE, job.job_id)
    assert done.delivered_to == ["default", "second"]
    index.close()


def test_unknown_destination_dead_letters(settings: NodeSettings, tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs")
    index = StateIndex(tmp_path / "state.sqlite3")
    job = Job(
        job_id=new_job_id(),
        study_instance_uid=generate_uid(),
        checkpoints=["c"],
        destinations=["gone"],
    )
    queue.stage(job)
    queue.commit(job)
    queue.move(job, JobStateValues.SENDING)
    Outbox(settings, queue, index, Metrics(), _Flaky(0)).run_once()
    failed = queue.load(JobStateValues.FAILED, job.job_id)
    assert failed.last_error is not None
    assert "no destination named 'gone'" in failed.last_error.message
    index.close()
