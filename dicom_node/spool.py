"""The spool: received instances, written durably, grouped by study until the study completes.

Layout under ``data_dir/spool/``::

    <study>/<sop>.dcm          one received instance, DICOM Part 10 file (preamble + meta + the
                               dataset bytes exactly as the peer sent them)
    <study>/.open-<token>      an association that sent this study is still open
    <study>/.process-now       an operator asked for the study to be processed at once
    .incoming/.tmp-*.part      data sets being received (``receive_mode=file``); never
                               acknowledged, removed at startup

``<study>`` and ``<sop>`` are the UIDs themselves when they are well-formed UIDs, otherwise a
hash of them (a peer controls these strings: they must never make a path). Every instance is
written to a temporary file, fsynced and renamed (`dicom_node.fsutil.write_durable`) *before*
the SCP acknowledges it; receiving the same SOP instance again replaces the file atomically,
so a re-send never duplicates an instance. The directory's modification time is the study's
last activity (new files, renames and removed markers all update it).

The router scans the spool every poll interval while studies arrive, so a scan must not cost
in proportion to everything spooled: `Spool` remembers the modification time of each instance
file it has seen (by name and inode) and stats only files that are new since the last scan (a
3000-instance study being received: one stat per new file, not 3000 per scan).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.errors import SpoolError
from dicom_node.fsutil import Content, ensure_dir, fsync_dir, is_temp_name, write_durable

logger = logging.getLogger(__name__)

INSTANCE_SUFFIX = ".dcm"
OPEN_MARKER_PREFIX = ".open-"
PROCESS_NOW_MARKER = ".process-now"
#: Folder (in the spool root; no study folder starts with a dot) where data sets being
#: received to a file (``receive_mode=file``) are written until their C-STORE is answered.
INCOMING_FOLDER = ".incoming"

_UID_RE = re.compile(r"[0-9](?:[0-9.]{0,63})")


def safe_name(uid: str) -> str:
    """A file-system name for a UID supplied by a peer.

    Args:
        uid: a UID (any string a peer sent).

    Returns:
        The UID itself if it looks like a DICOM UID (digits and dots, at most 64 characters,
        starting with a digit), else ``"h"`` + the first 40 hex digits of its sha256.
    """
    uid = uid.strip().rstrip("\x00")
    if _UID_RE.fullmatch(uid) and ".." not in uid:
        return uid
    return "h" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True)
class SpooledStudy:
    """A study that has instances waiting in the spool.

    Attributes:
        name: the study folder name (`safe_name` of the StudyInstanceUID).
        path: the folder.
        files: the instance files present when the spool was scanned, sorted by name.
        last_activity: POSIX time of the last change in the folder.
        first_arrival: POSIX time of the oldest instance file.
        open_associations: associations that sent instances of it and are still open.
        process_now: an operator asked for it to be processed now.
    """

    name: str
    path: Path
    files: tuple[Path, ...]
    last_activity: float
    first_arrival: float
    open_associations: int
    process_now: bool


@dataclass
class _Listing:
    """What the last scan saw in one study folder: (inode, mtime) and path per file name."""

    arrived: dict[str, tuple[int, float]] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    paths: dict[str, Path] = field(default_factory=dict)


class Spool:
    """Durable store of received instances, grouped by study.

    Args:
        root: the spool folder (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)
        ensure_dir(root)
        self.incoming_dir = root / INCOMING_FOLDER
        self._listings: dict[str, _Listing] = {}
        self._scan_lock = threading.Lock()

    def study_dir(self, study_uid: str) -> Path:
        """The folder of a study (not necessarily existing).

        Args:
            study_uid: the StudyInstanceUID.

        Returns:
            Its path.
        """
        return self.root / safe_name(study_uid)

    def store(self, study_uid: str, sop_instance_uid: str, data: Content) -> Path:
        """Write one instance durably; returns only once it is on stable storage.

        Args:
            study_uid: the instance's StudyInstanceUID.
            sop_instance_uid: its SOPInstanceUID.
            data: the complete Part 10 file content, or its parts in order.

        Returns:
            The spooled file.

        Raises:
            SpoolError: the instance could not be written (disk full, permissions...).
        """
        # plain strings, as in `write_durable`: this runs once per received instance
        folder = os.path.join(self._root, safe_name(study_uid))  # noqa: PTH118
        path = os.path.join(folder, f"{safe_name(sop_instance_uid)}{INSTANCE_SUFFIX}")  # noqa: PTH118
        last_error: OSError | None = None
        # The folder is created when a write finds it missing: a new study, or the router
        # removed an emptied folder while this write raced with it (no stat per instance).
        for _ in range(3):
            try:
                write_durable(path, data)
            except FileNotFoundError as exc:
                last_error = exc
                try:
                    ensure_dir(Path(folder))
                except OSError as dir_exc:
                    raise SpoolError(f"cannot create spool folder: {dir_exc.strerror}") from exc
                continue
            except OSError as exc:
                raise SpoolError(f"cannot write spool file: {exc.strerror}") from exc
            return Path(path)
        raise SpoolError("spool study folder kept disappearing") from last_error

    def mark_open(self, study_uid: str, token: str) -> None:
        """Note that an association (``token``) is sending this study.

        The marker is a hint for study completion, not data: it is not fsynced, and
        `clear_stale` removes all markers at startup (no association survives a restart).

        Args:
            study_uid: the StudyInstanceUID.
            token: a name unique to the association.
        """
        path = self.study_dir(study_uid) / f"{OPEN_MARKER_PREFIX}{token}"
        with contextlib.suppress(FileNotFoundError):
            path.touch()

    def mark_closed(self, study_uid: str, token: str) -> None:
        """The association ``token`` ended: remove its marker and note the study's activity.

        Args:
            study_uid: the StudyInstanceUID.
            token: the token given to `mark_open`.
        """
        folder = self.study_dir(study_uid)
        with contextlib.suppress(FileNotFoundError):
            (folder / f"{OPEN_MARKER_PREFIX}{token}").unlink()
        with contextlib.suppress(FileNotFoundError):
            os.utime(folder)

    def request_process_now(self, study_uid: str) -> bool:
        """Ask for a spooled study to be processed without waiting for the quiet period.

        Args:
            study_uid: the StudyInstanceUID.

        Returns:
            True if the study has instances waiting (the request is recorded durably);
            False if nothing of it is in the spool.
        """
        folder = self.study_dir(study_uid)
        if not folder.is_dir() or not any(folder.glob(f"*{INSTANCE_SUFFIX}")):
            return False
        try:
            write_durable(folder / PROCESS_NOW_MARKER, b"")
        except FileNotFoundError:
            return False
        return True

    def clear_process_now(self, folder: Path) -> None:
        """Remove a study folder's process-now request (after its job was created).

        Args:
            folder: the study folder.
        """
        with contextlib.suppress(FileNotFoundError):
            (folder / PROCESS_NOW_MARKER).unlink()

    def scan(self) -> list[SpooledStudy]:
        """List the studies with instances waiting.

        Returns:
            One entry per study folder holding at least one instance file.
        """
        studies: list[SpooledStudy] = []
        try:
            folders = list(os.scandir(self.root))
        except FileNotFoundError:
            return studies
        with self._scan_lock:
            seen: set[str] = set()
            for entry in folders:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                seen.add(entry.name)
                study = self._scan_study(Path(entry.path))
                if study is not None:
                    studies.append(study)
            for gone in self._listings.keys() - seen:
                del self._listings[gone]
        return studies

    def _scan_study(self, folder: Path) -> SpooledStudy | None:
        previous = self._listings.get(folder.name)
        known = previous.arrived if previous is not None else {}
        arrived: dict[str, tuple[int, float]] = {}
        open_assocs = 0
        process_now = False
        try:
            last_activity = folder.stat().st_mtime
            for entry in os.scandir(folder):
                name = entry.name
                if name.endswith(INSTANCE_SUFFIX) and not name.startswith("."):
                    # A re-sent instance is a new file (written aside, renamed over the old
                    # one): a new inode, so it is stat'ed again, as a new name is.
                    inode = entry.inode()
                    seen = known.get(name)
                    if seen is None or seen[0] != inode:
                        try:
                            seen = (inode, entry.stat().st_mtime)
                        except FileNotFoundError:
                            continue
                    arrived[name] = seen
                elif name.startswith(OPEN_MARKER_PREFIX):
                    open_assocs += 1
                elif name == PROCESS_NOW_MARKER:
                    process_now = True
        except FileNotFoundError:
            self._listings.pop(folder.name, None)
            return None
        if not arrived:
            self._listings.pop(folder.name, None)
            return None
        if previous is not None and arrived.keys() == known.keys():
            files, paths = previous.files, previous.paths
        else:  # a path is made once per new file, not once per file and scan
            old = previous.paths if previous is not None else {}
            paths = {name: old.get(name) or folder / name for name in arrived}
            files = tuple(paths[name] for name in sorted(paths))
        self._listings[folder.name] = _Listing(arrived, files, paths)
        return SpooledStudy(
            name=folder.name,
            path=folder,
            files=files,
            last_activity=last_activity,
            first_arrival=min(mtime for _, mtime in arrived.values()),
            open_associations=open_assocs,
            process_now=process_now,
        )

    def remove_if_empty(self, folder: Path) -> None:
        """Remove a study folder that holds no instance any more (markers are dropped).

        Args:
            folder: the study folder.
        """
        with self._scan_lock:  # its instances were taken: the next scan lists it afresh
            self._listings.pop(folder.name, None)
        try:
            names = [p.name for p in folder.iterdir()]
        except FileNotFoundError:
            return
        if any(n.endswith(INSTANCE_SUFFIX) or is_temp_name(n) for n in names):
            return
        if any(n.startswith(OPEN_MARKER_PREFIX) for n in names):
            return  # an association is still sending to it
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            folder.rmdir()
            fsync_dir(self.root)

    def clear_stale(self) -> None:
        """At startup: drop temporary files (never acknowledged) and association markers."""
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if is_temp_name(path.name) or path.name.startswith(OPEN_MARKER_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        logger.info(
                            "removed stale spool entry",
                            extra={"study_dir": folder.name, "entry": path.name},
                        )

    def pending_count(self) -> int:
        """Number of instance files waiting in the spool."""
        return sum(len(s.files) for s in self.scan())

    @staticmethod
    def now() -> float:
        """Current POSIX time (the clock the file modification times use)."""
        return time.time()
