"""``<data_dir>/secrets.json``: credentials generated on the first run and kept (mode 0600).

``serve`` takes its HTTP API token from here when none is configured
(`dicom_node.__main__.with_api_token`); the development stack (``devstack``) keeps its
Orthanc and viewer passwords in the same file, so one data folder has one secrets file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError

#: Orthanc HTTP user of the development stack (the node's STOW-RS and the viewer's proxy).
ORTHANC_USER = "ainode"


@dataclass(frozen=True)
class Secrets:
    """Credentials generated on the first run and kept in ``<data_dir>/secrets.json``.

    Attributes:
        orthanc_user: Orthanc HTTP user (the node's STOW-RS and the viewer's proxy use it).
        orthanc_password: its password.
        api_token: bearer token of the node's small HTTP API.
        viewer_user: login of the viewer server when it listens beyond loopback.
        viewer_password: its password.
    """

    orthanc_user: str
    orthanc_password: str
    api_token: str
    viewer_user: str
    viewer_password: str


def load_or_create_secrets(data_dir: Path) -> Secrets:
    """Read ``<data_dir>/secrets.json``, creating it (mode 0600) with new random values.

    Values missing from an existing file (written by an older version) are generated and
    the file is rewritten; existing values are kept.

    Args:
        data_dir: the state folder.

    Returns:
        The secrets.

    Raises:
        ConfigError: the file exists but is not a JSON object.
    """
    path = data_dir / "secrets.json"
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); delete it to regenerate") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} is not a JSON object; delete it to regenerate")
    defaults: dict[str, Callable[[], str]] = {
        "orthanc_user": lambda: ORTHANC_USER,
        "orthanc_password": lambda: secrets.token_urlsafe(24),
        "api_token": lambda: secrets.token_urlsafe(32),
        "viewer_user": lambda: "radiologist",
        "viewer_password": lambda: secrets.token_urlsafe(18),
    }
    values = {key: str(raw[key]) if raw.get(key) else make() for key, make in defaults.items()}
    if values != raw:
        write_private(path, json.dumps(values, indent=2) + "\n")
    else:
        path.chmod(0o600)
    return Secrets(**values)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created 0600, never world-readable).

    Args:
        path: the file (its folder is created).
        text: the content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.chmod(0o600)
    tmp.replace(path)
