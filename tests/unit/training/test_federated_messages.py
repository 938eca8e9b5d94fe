"""What a site sends: only the model's weights and whitelisted scalars; epsilon grows per round."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("opacus")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from training.federated import client_app, task
from training.federated.server_app import aggregate_metrics, initial_state

from .test_federated import tiny_manifest


def _settings(manifest: Path, **kw) -> task.FedSettings:
    return task.settings_from(
        {},
        manifest=str(manifest),
        image_size=32,
        noise_dim=8,
        g_channels="4,8",
        d_channels="4,4,4,4",
        batch_size=4,
        site_fid=False,
        **kw,
    )


def _train_message(arrays: ArrayRecord, s: task.FedSettings, server_round: int) -> Message:
    config = ConfigRecord({**s.to_flower(), "server-round": server_round})
    return Message(
        content=RecordDict({"arrays": arrays, "config": config}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )


@pytest.fixture
def site_context(monkeypatch) -> Context:
    # what the Flower runtime sets in a ClientApp process before it handles a message
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 1, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )


def test_reply_holds_only_weights_and_scalars_and_epsilon_grows(tmp_path, site_context) -> None:
    s = _settings(tiny_manifest(tmp_path))
    arrays = ArrayRecord(initial_state(s))
    pid, site = task.site_from_node_config(site_context.node_config, s)
    flat_images = {tuple(im.flatten()[:64].tolist()) for im in site.images}
    eps = []
    for server_round in (1, 2, 3):
        reply = client_app.train_reply(_train_message(arrays, s, server_round), site_context)
        content = reply.content
        # exactly one ArrayRecord and one MetricRecord, nothing else
        assert set(content.array_records) == {"arrays"}
        assert set(content.metric_records) == {"metrics"}
        assert not content.config_records
        sent = content["arrays"].to_torch_state_dict()
        expected = initial_state(s)
        assert set(sent) == set(expected)
        for key, value in sent.items():
            assert value.shape == expected[key].shape, key
            # no tensor is shaped like a batch of this site's images
            assert tuple(value.shape[-2:]) != (s.image_size, s.image_size), key
            flat = value.flatten()
            if flat.numel() >= 64:
                assert tuple(flat[:64].tolist()) not in flat_images
        metrics = dict(content["metrics"])
        assert set(metrics) <= set(client_app.TRAIN_METRICS)
        assert all(isinstance(v, int | float) for v in metrics.values())
        assert metrics["num-examples"] == len(site.images)
        assert metrics["partition-id"] == pid
        eps.append(metrics["epsilon"])
        arrays = content["arrays"]
    assert eps[0] > 0
    assert eps[0] < eps[1] < eps[2]
    # the site's running total lives in its own state, not in the message
    assert site_context.state.config_records["dp"]["steps"] > 0


def test_server_aggregates_max_epsilon() -> None:
    from flwr.app import MetricRecord

    rows = [
        RecordDict({"metrics": MetricRecord({"num-examples": 10, "d-loss": 1.0, "epsilon": 2.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 30, "d-loss": 3.0, "epsilon": 5.0})}),
    ]
    out = aggregate_metrics(rows, "num-examples")
    assert out["epsilon"] == 5.0
    assert out["d-loss"] == pytest.approx(2.5)
    assert out["num-examples"] == 40


def test_classifier_task_reply(tmp_path, site_context) -> None:
    s = _settings(tiny_manifest(tmp_path), task="classifier", split="val", dp=False)
    arrays = ArrayRecord(initial_state(s))
    reply = client_app.train_reply(_train_message(arrays, s, 1), site_context)
    assert set(reply.content["arrays"].to_torch_state_dict()) == set(initial_state(s))
    assert torch.isfinite(torch.tensor(reply.content["metrics"]["loss"]))
