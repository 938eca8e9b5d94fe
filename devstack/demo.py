"""The demo: the stack plus the sample studies, ``python -m devstack`` (``scripts/run.sh``).

`main`

1. starts `devstack.stack.EmbeddedStack` (Orthanc, the node, the viewer server);
2. C-STOREs the sample studies under ``tests/data/dicom/`` to Orthanc as the "scanner"
   ``SAMPLESCU`` (with the product's `dicom_node.sender.CStoreSender`) and prints one line
   per study when the node has delivered its results (the node's index, as
   ``GET /studies/scores`` answers);
3. runs until Ctrl-C (or SIGTERM) and then stops everything, Orthanc's process group included.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from devstack import REPO_ROOT
from devstack.orthanc import ORTHANC_AET, DicomPeer
from devstack.stack import (
    DEFAULT_DATA_DIR,
    LOOPBACK_HOSTS,
    NODE_AET,
    SAMPLE_SCU_AET,
    EmbeddedStack,
    StackOptions,
)
from dicom_node.errors import DicomNodeError
from dicom_node.sender import CStoreSender

if TYPE_CHECKING:
    from dicom_node.index import StudyScore

logger = logging.getLogger(__name__)

SAMPLES_DIR = REPO_ROOT / "tests" / "data" / "dicom"


def send_files(
    files: Sequence[Path],
    host: str,
    port: int,
    *,
    calling_ae: str = SAMPLE_SCU_AET,
    called_ae: str = ORTHANC_AET,
    timeout: float = 60.0,
) -> None:
    """C-STORE files as the stack's "scanner" (the product's `CStoreSender`, one association).

    Args:
        files: Part 10 files.
        host: the SCP's address.
        port: its port.
        calling_ae: our AE title (the "scanner").
        called_ae: the SCP's AE title.
        timeout: ACSE/DIMSE/network timeout in seconds.

    Raises:
        SendError: the association was rejected or failed, or a file got a failure status.
    """
    CStoreSender(host, port, called_ae, calling_ae, timeout).send(files)


@dataclass(frozen=True)
class SampleStudy:
    """A sample study folder under tests/data/dicom/.

    Attributes:
        name: folder name.
        files: its DICOM files.
        study_uid: StudyInstanceUID.
        description: StudyDescription (public sample text, no PHI) or the folder name.
        label: the source's label, if known.
        modality: Modality of its first file ("" when absent).
    """

    name: str
    files: tuple[Path, ...]
    study_uid: str
    description: str
    label: str
    modality: str = ""


def discover_samples(samples_dir: Path = SAMPLES_DIR) -> list[SampleStudy]:
    """The sample studies (one per folder), with labels from ``samples.json`` when present.

    Args:
        samples_dir: ``tests/data/dicom``.

    Returns:
        The studies, sorted by folder name.
    """
    from pydicom import dcmread

    labels: dict[str, str] = {}
    index = samples_dir.parent / "samples.json"
    if index.exists():
        labels = {e["study"]: e["label"] for e in json.loads(index.read_text(encoding="utf-8"))}
    studies = []
    for folder in sorted(p for p in samples_dir.iterdir() if p.is_dir()):
        files = tuple(sorted(folder.glob("*.dcm")))
        if not files:
            continue
        head = dcmread(files[0], stop_before_pixels=True)
        studies.append(
            SampleStudy(
                name=folder.name,
                files=files,
                study_uid=str(head.StudyInstanceUID),
                description=str(head.get("StudyDescription") or folder.name),
                label=labels.get(folder.name, "unknown"),
                modality=str(head.get("Modality", "")),
            )
        )
    return studies


@dataclass
class _Pending:
    study: SampleStudy
    sent_at: float
    done: bool = False


@dataclass(frozen=True)
class SampleOutcome:
    """What happened to one sample study.

    Attributes:
        seconds: from the C-STORE to the results being delivered (0 for an earlier run's).
        abnormal: the node's study-level flag.
    """

    seconds: float
    abnormal: bool


def summary_line(study: SampleStudy, score: StudyScore, seconds: float) -> str:
    """One line per study: name, short UID, score, threshold, flag, time taken."""
    short_uid = "…" + study.study_uid[-10:]
    if score.score is None:
        return f"{study.name:<24} {short_uid}  no study score (not analysed)  {seconds:6.1f} s"
    flag = "ABNORMAL" if score.is_abnormal else "normal"
    threshold = f"{score.threshold:.4g}" if score.threshold is not None else "?"
    return (
        f"{study.name:<24} {short_uid}  score {score.score:<8.4g} threshold {threshold:<8} "
        f"{flag:<12} {seconds:6.1f} s  (source label: {study.label})"
    )


def send_samples_and_report(
    stack: EmbeddedStack,
    studies: Sequence[SampleStudy],
    *,
    timeout: float = 600.0,
    out: IO[str] | None = None,
) -> dict[str, SampleOutcome]:
    """C-STORE each sample study to Orthanc as the scanner; print a line when its results are in.

    A sample study the node has already delivered results for (an earlier run on the same
    data folder) is not sent again: its line is printed at once, marked as such. ``--fresh``
    wipes the state to run every study through again.

    Args:
        stack: the running stack.
        studies: the sample studies.
        timeout: seconds to wait for all results.
        out: where to print (stdout by default).

    Returns:
        The outcome per study name; studies without results are missing.
    """
    stream = out or sys.stdout
    pending: list[_Pending] = []
    timings: dict[str, SampleOutcome] = {}
    for study in studies:
        earlier = stack.study_score(study.study_uid)
        if earlier is not None:
            line = summary_line(study, earlier, 0.0)
            print(
                f"{line}  [earlier run, model {earlier.model}; --fresh re-analyses]",
                file=stream,
                flush=True,
            )
            timings[study.name] = SampleOutcome(0.0, bool(earlier.is_abnormal))
            continue
        t0 = time.monotonic()
        try:
            send_files(study.files, "127.0.0.1", stack.options.dicom_port)
        except DicomNodeError as exc:
            print(f"{study.name}: not sent: {exc}", file=stream)
            continue
        pending.append(_Pending(study, t0))
    if pending:
        print(
            f"sent {len(pending)} studies as AE {SAMPLE_SCU_AET}; each result needs Orthanc's "
            f"StableAge ({stack.options.stable_age} s) + the node's quiet period "
            f"({stack.options.quiet_seconds:g} s) + inference",
            file=stream,
            flush=True,
        )
    deadline = time.monotonic() + timeout
    while any(not p.done for p in pending) and time.monotonic() < deadline:
        stack.check_alive()
        for item in pending:
            if item.done:
                continue
            score = stack.study_score(item.study.study_uid)
            if score is not None:
                seconds = time.monotonic() - item.sent_at
                item.done = True
                timings[item.study.name] = SampleOutcome(seconds, bool(score.is_abnormal))
                print(summary_line(item.study, score, seconds), file=stream, flush=True)
        time.sleep(0.5)
    for item in pending:
        if not item.done:
            print(f"{item.study.name}: no results within {timeout:.0f} s", file=stream)
    return timings


def _parse_peer(text: str) -> DicomPeer:
    """``AET@HOST`` (or ``AET@HOST:PORT``) -> an allowed scanner."""
    aet, sep, rest = text.partition("@")
    if not sep or not aet or not rest:
        raise argparse.ArgumentTypeError(f"expected AET@HOST[:PORT], got {text!r}")
    host, _, port = rest.partition(":")
    return DicomPeer(f"scanner-{aet.lower()}", aet, host, int(port or 104))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m devstack`` command line (``scripts/run.sh`` passes its arguments)."""
    parser = argparse.ArgumentParser(
        prog="python -m devstack",
        description="Run the embedded default (Orthanc + AI node + OHIF viewer) and send "
        "the sample studies through it. Ctrl-C stops everything.",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--no-samples", action="store_true", help="do not send sample studies")
    parser.add_argument("--samples-dir", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--stable-age", type=int, default=5)
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--node-port", type=int, default=11112)
    parser.add_argument("--node-http-port", type=int, default=8099)
    parser.add_argument("--viewer-port", type=int, default=3000, help="0: no viewer")
    parser.add_argument(
        "--viewer-host",
        default="127.0.0.1",
        help="address the viewer binds (0.0.0.0 to reach it from other machines)",
    )
    parser.add_argument("--checkpoint", action="append", dest="checkpoints")
    parser.add_argument(
        "--allow-scanner",
        action="append",
        type=_parse_peer,
        default=[],
        metavar="AET@HOST[:PORT]",
        help="another AE allowed to C-STORE into Orthanc (repeatable)",
    )
    parser.add_argument("--fresh", action="store_true", help="wipe Orthanc and node state first")
    parser.add_argument("--result-timeout", type=float, default=600.0)
    parser.add_argument(
        "--once", action="store_true", help="exit after the samples' results (or at once)"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="console log level (the full INFO log goes to <data-dir>/logs/node.log)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the embedded default until Ctrl-C.

    Args:
        argv: command-line arguments (without the program name).

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.data_dir.resolve() / "logs", args.log_level)
    options = StackOptions(
        data_dir=args.data_dir,
        http_port=args.http_port,
        dicom_port=args.dicom_port,
        node_port=args.node_port,
        node_http_port=args.node_http_port,
        viewer_port=args.viewer_port,
        viewer_host=args.viewer_host,
        stable_age=args.stable_age,
        quiet_seconds=args.quiet_seconds,
        checkpoints=tuple(args.checkpoints or ("default-cxr", "default-brain")),
        scanners=(DicomPeer("scanner", SAMPLE_SCU_AET), *args.allow_scanner),
        fresh=args.fresh,
    )

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    stack = EmbeddedStack(options)
    try:
        stack.__enter__()
        _print_banner(stack, time.monotonic() - t0)
        if not args.no_samples:
            studies = discover_samples(args.samples_dir)
            timings = send_samples_and_report(stack, studies, timeout=args.result_timeout)
            if stack.viewer_url and studies:
                flagged = [st for st in studies if st.name in timings and timings[st.name].abnormal]
                flagged.sort(
                    key=lambda st: st.label != "abnormal"
                )  # agreeing with the source first
                shown = (flagged or studies)[0]
                print(
                    f"open a study ({shown.name}): {stack.viewer_url}/viewer?"
                    f"StudyInstanceUIDs={shown.study_uid}"
                )
            if args.once:
                return 0 if len(timings) == len(studies) else 1
        if args.once:
            return 0
        print("running; press Ctrl-C to stop", flush=True)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    except DicomNodeError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and orphan Orthanc.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        print(f"stopped (Orthanc, node and viewer) after {time.monotonic() - t0:.0f} s", flush=True)


def _configure_logging(log_dir: Path, console_level: str) -> None:
    """Console at ``console_level``; everything from INFO up into ``log_dir/node.log``."""
    root = logging.getLogger()
    if root.handlers:  # configured by the caller
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(log_dir / "node.log", encoding="utf-8")
    file_handler.setFormatter(fmt)
    file_handler.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    console.setLevel(console_level.upper())
    root.addHandler(file_handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise


def _print_banner(stack: EmbeddedStack, startup_seconds: float) -> None:
    opts = stack.options
    print(f"started in {startup_seconds:.1f} s; state in {stack.data_dir}")
    print(f"logs:     {stack.data_dir / 'logs'}/ (node.log, viewer.log), orthanc/orthanc.log")
    if stack.viewer_url:
        print(f"viewer:   {stack.viewer_url}/   (OHIF with the AI anomaly panel)")
        if opts.viewer_host not in LOOPBACK_HOSTS:
            print(
                f"          login {stack.secrets.viewer_user if stack.secrets else '?'}, "
                f"password in {stack.data_dir / 'secrets.json'}"
            )
    else:
        print("viewer:   not running (ohif-extension/server/serve.mjs missing or --viewer-port 0)")
    print(
        f"Orthanc:  {stack.orthanc_url}/app/explorer.html (this host only; user "
        f"{stack.auth[0]}, password in {stack.data_dir / 'secrets.json'})"
    )
    scanners = ", ".join(f"{p.aet}@{p.host}" for p in opts.scanners)
    print(f"DICOM:    send to AE {ORTHANC_AET} port {opts.dicom_port} (allowed: {scanners})")
    print(
        f"node:     AE {NODE_AET} on 127.0.0.1:{opts.node_port}, "
        f"API on 127.0.0.1:{opts.node_http_port}"
    )
