"""Fixtures of the training tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture
def readable_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """``.item()`` / ``float()`` of a meta tensor give 0.0 instead of raising.

    The device tests run training on PyTorch's ``meta`` device (shapes, no data), where any
    CPU tensor mixed in fails as it would on CUDA; a loss logged with ``float()`` has no value
    to read there.
    """
    item, to_float = torch.Tensor.item, torch.Tensor.__float__

    def meta_item(self: torch.Tensor) -> Any:
        return 0.0 if self.is_meta else item(self)

    def meta_float(self: torch.Tensor) -> float:
        return 0.0 if self.is_meta else to_float(self)

    monkeypatch.setattr(torch.Tensor, "item", meta_item)
    monkeypatch.setattr(torch.Tensor, "__float__", meta_float)
