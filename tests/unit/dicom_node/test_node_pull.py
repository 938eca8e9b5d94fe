"""Pull mode pieces that need no PACS: --since parsing, and claims across processes."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from dicom_node.errors import ConfigError
from dicom_node.index import ClaimConflictError, StateIndex
from dicom_node.pull import parse_since


def test_parse_since() -> None:
    now = datetime(2024, 3, 10, 1, 0, tzinfo=UTC)
    assert parse_since("1d", now) == date(2024, 3, 9)
    assert parse_since("12h", now) == date(2024, 3, 9)
    assert parse_since("30m", now) == date(2024, 3, 10)
    assert parse_since("2w", now) == date(2024, 2, 25)
    assert parse_since("20240131") == date(2024, 1, 31)
    assert parse_since("2024-01-31") == date(2024, 1, 31)
    for bad in ("yesterday", "1y", "2024/01/31", ""):
        with pytest.raises(ConfigError, match="--since"):
            parse_since(bad)


def test_a_claim_made_by_another_process_wins(tmp_path: Path) -> None:
    """Two connections (the node and a pull run) claim the same instance: only one gets it."""
    node = StateIndex(tmp_path / "state.sqlite3")
    pull = StateIndex(tmp_path / "state.sqlite3")
    item = [("1.2.3.4", "default-cxr", "1.0.0")]
    # both checked and found nothing claimed ...
    assert not node.claimed(["1.2.3.4"], "default-cxr", "1.0.0")
    assert not pull.claimed(["1.2.3.4"], "default-cxr", "1.0.0")
    node.claim("job-a", "1.2.3", item)
    # ... the second claim is refused inside its transaction
    with pytest.raises(ClaimConflictError):
        pull.claim("job-b", "1.2.3", item)
    # a failed job's claim may be taken over, and a new version is a new key
    node.set_state("job-a", "failed")
    pull.claim("job-b", "1.2.3", item)
    pull.claim("job-c", "1.2.3", [("1.2.3.4", "default-cxr", "2.0.0")])
    node.close()
    pull.close()
