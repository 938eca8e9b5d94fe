"""Flower ClientApp: one site trains the round's global model on its own images.

A reply carries only (1) the updated network weights, under exactly the keys and shapes of
the global model, and (2) scalar metrics: ``num-examples`` (the site's image count, used as
the FedAvg weight), mean losses, and the site's privacy spent so far (``epsilon``, ``delta``,
``dp-steps``). No image, attribute, patient id or per-image value is sent
(tests/unit/training/test_federated_messages.py checks this).

A site trains on its node config's ``device`` (default ``auto``: its GPU when it has one);
weights travel as CPU tensors either way.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ai_engine.models.fed_cgan.local import epsilon, synthesize, train_local
from training.federated import task

logger = logging.getLogger(__name__)
app = ClientApp()

#: metric keys a site may send back
TRAIN_METRICS = (
    "num-examples",
    "partition-id",
    "d-loss",
    "g-loss",
    "cond-cos",
    "epsilon",
    "delta",
    "epsilon-1e-5",
    "dp-steps",
    "loss",
)
EVAL_METRICS = ("num-examples", "partition-id", "fid", "kid", "kid-std")


def _accumulate_privacy(
    context: Context, steps: int, sample_rate: float, s: task.FedSettings
) -> tuple[int, float, float]:
    """Add this round's DP-SGD steps to the site's running total.

    Returns:
        (steps, epsilon at the run's delta, epsilon at delta = 1e-5).
    """
    state = context.state.config_records.get("dp", ConfigRecord({"steps": 0, "sample-rate": 0.0}))
    total = int(state["steps"]) + steps
    # the sample rate is fixed by the site's size and batch size; keep the largest seen
    rate = max(float(state["sample-rate"]), sample_rate)
    context.state.config_records["dp"] = ConfigRecord({"steps": total, "sample-rate": rate})
    if not s.dp:
        return total, float("inf"), float("inf")
    return (
        total,
        epsilon(s.noise_multiplier, rate, total, s.delta),
        epsilon(s.noise_multiplier, rate, total, 1e-5),
    )


def train_reply(msg: Message, context: Context) -> Message:
    """Local update of the global weights in ``msg``; the reply described in the module doc."""
    torch.set_num_threads(1)
    s = task.settings_from(msg.content["config"])
    pid, site = task.site_from_node_config(context.node_config, s)
    state = msg.content["arrays"].to_torch_state_dict()
    round_seed = s.seed * 1000 + int(msg.content["config"].get("server-round", 0)) * 10 + pid
    device = task.site_device(context.node_config)
    if s.task == "cgan":
        g, d = task.build_gan(s)
        task.load_state_dict_into(state, {"generator": g, "discriminator": d})
        g, d = g.to(device), d.to(device)
        result = train_local(g, d, site.images, site.attributes, s.local(), seed=round_seed)
        steps, eps, eps_1e5 = _accumulate_privacy(context, result.steps, result.sample_rate, s)
        new_state = task.state_dict_of({"generator": g, "discriminator": d})
        metrics = {
            "d-loss": result.d_loss,
            "g-loss": result.g_loss,
            "cond-cos": result.cond_cos_fake,
            "epsilon": eps,
            "delta": s.delta,
            "epsilon-1e-5": eps_1e5,
            "dp-steps": steps,
        }
    elif s.task == "classifier":
        model = task.build_classifier(s)
        task.load_state_dict_into(state, {"classifier": model})
        model = model.to(device)
        _, loss = task.train_classifier_local(model, site, s)
        new_state = task.state_dict_of({"classifier": model})
        metrics = {"loss": loss, "epsilon": float("inf"), "delta": 0.0, "dp-steps": 0}
    else:
        raise ValueError(f"unknown task {s.task!r}")
    metrics.update({"num-examples": len(site.images), "partition-id": pid})
    reply = RecordDict(
        {"arrays": ArrayRecord(new_state), "metrics": MetricRecord(metrics)}  # type: ignore[arg-type]
    )
    return Message(content=reply, reply_to=msg)


def evaluate_reply(msg: Message, context: Context) -> Message:
    """Site-side FID/KID of the global generator against the site's own real images."""
    torch.set_num_threads(1)
    s = task.settings_from(msg.content["config"])
    pid, site = task.site_from_node_config(context.node_config, s)
    metrics: dict[str, float | int] = {"num-examples": len(site.images), "partition-id": pid}
    if s.task == "cgan":
        g, d = task.build_gan(s)
        task.load_state_dict_into(
            msg.content["arrays"].to_torch_state_dict(), {"generator": g, "discriminator": d}
        )
        g = g.to(task.site_device(context.node_config))
        n = min(s.fid_samples, len(site.images))
        # synthetic images for this site's own attribute mix (the vectors stay here)
        fake = synthesize(g, site.attributes[:n], seed=s.seed + 7)
        metrics.update(
            {k.replace("_", "-"): v for k, v in task.fid_kid(site.images[:n], fake).items()}
        )
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)  # type: ignore[arg-type]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower entry point for training messages."""
    return train_reply(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Flower entry point for evaluation messages."""
    return evaluate_reply(msg, context)
