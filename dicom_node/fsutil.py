"""Durable file-system primitives: write-then-rename with fsync of file and directory.

Every stage boundary of the node is a rename on one file system, so a crash (even
``kill -9`` or a power cut) leaves either the old or the new state, never half a file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

#: What `write_durable` writes: one buffer, or several written one after the other.
Content = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]

#: Prefix and suffix of temporary files; everything named like this is garbage after a crash.
TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".part"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (new, renamed or removed names) to stable storage.

    Args:
        path: the directory.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """True for the names `write_durable` uses for its temporary files."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def write_durable(path: str | os.PathLike[str], data: Content) -> None:
    """Write ``data`` to ``path`` atomically and durably.

    A temporary file in the same directory (created 0600: received instances hold PHI) is
    written and fsynced, renamed over ``path``
    with `os.replace` (atomic on POSIX, so a re-write replaces the old content in one
    step), then the directory is fsynced so the new name survives a power cut.

    Args:
        path: the destination; its directory must exist.
        data: the complete content, or its parts in order (e.g. a new file meta and the
            data set still in a memory-mapped file: nothing is joined in memory).

    Raises:
        OSError: the write failed (disk full, permissions, ...); no partial file is left.
            FileNotFoundError when the directory does not exist.
    """
    # plain strings: this runs once per received instance, pathlib costs more than the work
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}{TMP_SUFFIX}")  # noqa: PTH118
    parts = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for part in parts:
                with memoryview(part) as view:
                    done = 0
                    while done < len(view):  # os.write may write less than asked
                        done += os.write(fd, view[done:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)  # noqa: PTH105
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # noqa: PTH108
        raise
    fsync_dir(folder or ".")


def ensure_dir(path: Path) -> bool:
    """Create ``path`` (and parents) if missing and make the new entry durable.

    Args:
        path: the directory.

    Returns:
        True if it was created by this call.
    """
    if path.is_dir():
        return False
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    fsync_dir(path.parent)
    return True


def move_durable(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (same file system) and fsync both parent directories.

    Args:
        src: existing file or directory.
        dst: new path; an existing file is replaced, an existing non-empty directory is not.
    """
    src.replace(dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
