"""Full-batch training of group composition models (Chughtai, Chan, Nanda 2023), one seed at a time.

Each epoch is one AdamW step (betas (0.9, 0.98), weight decay on every trained parameter, as in
the paper; the transformer's biases are frozen at 0 by default, as there) on the cross-entropy of
all train pairs, computed in float64 (`logits.double()`).
Optionally Grokfast-EMA (Lee et al. 2024) amplifies the slow gradient component.

How K seeds run, measured on this machine (2 shared cores, torch 2.13 CPU; S5 MLP at the paper's
sizes, 8640 train pairs; an epoch is forward + backward + AdamW):

- per seed, the per-element tables of `GroupMLP` (pre(a, b) = T_L[a] + T_R[b]) take ~19-21 ms
  an epoch on 1 thread against ~55 ms for the naive concat + linear forward; end to end,
  `benchmarks/bench_group_training.py` (8 seeds, 50 epochs, 1 thread) measured 43.9 against
  17.5 seed-epochs/s, 2.52x, i.e. 23 s per 1000 epochs per seed;
- K = 8 seeds stacked into one batched-matmul model (tables included, one AdamW) ran at
  0.47-0.70x the sequential speed on 1 thread (23 vs 33-49 seed-epochs/s): seeds run one after
  another. (A naive stacked ensemble was measured earlier at 0.7x.)
- threads: on an idle machine 2 threads take ~12.5 ms an epoch against ~21 ms on 1; with another
  job on the second core, 2 threads fell to 4 seed-epochs/s (86 s per 1000 epochs): threads wait
  on a busy core. Use `threads=1` when the cores are shared.
- what is left: the float64 cross-entropy (log-softmax forward and backward on [8640, 120]
  doubles) is about 40% of an epoch; a float32 loss would take ~12.6 ms instead of ~21 ms.

Curve points are evaluated without gradient on all pairs before the step of their epoch, every
`log_every` epochs and at the last one; checkpoints are float32 state dicts at log-spaced epochs.

Checkpoint directory (`save_group_model`, via `save_checkpoint`):

    weights.safetensors   the final state dict, and "checkpoints.{epoch}.{name}" for every checkpoint
    metadata.json         seed, model and train configs, task, curve, epochs_to_grok, checkpoint epochs

>>> from universality.groups import make_group
>>> from universality.tasks import composition_task
>>> config = GroupTrainConfig(epochs=20, log_every=10, checkpoints=3, threads=1)
>>> task = composition_task(make_group("S3"), config.train_fraction, seed=0)
>>> trained = train_group_seed(task, GroupMLPConfig(embed_dim=8, hidden=16), config, seed=0)
>>> [point["epoch"] for point in trained.curve], sorted(trained.checkpoints)
([0, 10, 20], [0, 1, 20])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import TypeAdapter
from torch import nn
from torch.nn import functional as F

from ..config import GroupMLPConfig, GroupModelConfig, GroupTrainConfig, GroupTransformerConfig
from .._threads import resolve_threads
from ..errors import UniversalityError
from ..models import GroupMLP, GroupTransformer
from ..tasks import GroupTask
from ._seeds import check_tensors, checkpoint_epochs, read_checkpoint, save_checkpoint, with_checkpoints

__all__ = ["GroupTrainConfig", "GroupMLPConfig", "GroupTransformerConfig", "GroupModelConfig",
           "TrainedGroupModel", "build_group_model", "train_group_seed", "train_group_seeds",
           "save_group_model", "load_group_model"]

GROK_ACCURACY = 0.99  # `epochs_to_grok`: the first logged epoch with test accuracy at least this


@dataclass
class TrainedGroupModel:
    """One trained seed.

    seed : int
    model : GroupMLP or GroupTransformer, in eval mode
    curve : list of {"epoch", "train_loss", "test_loss", "train_acc", "test_acc"}
    checkpoints : {epoch: state dict of float32 tensors}, at `checkpoint_epochs` and the last epoch
    epochs_to_grok : int or None, the first logged epoch with test accuracy >= 0.99
    seconds : float, wall time of the training loop
    model_config, config : the settings it was built and trained with
    """

    seed: int
    model: nn.Module
    curve: list[dict]
    checkpoints: dict[int, dict[str, torch.Tensor]]
    epochs_to_grok: int | None
    seconds: float
    model_config: GroupMLPConfig | GroupTransformerConfig
    config: GroupTrainConfig


def build_group_model(model_config: GroupMLPConfig | GroupTransformerConfig, order: int,
                      seed: int) -> GroupMLP | GroupTransformer:
    """The model `model_config` describes, for a group of `order` elements, initialised from `seed`."""
    settings = model_config.model_dump(exclude={"arch"})
    model_class = GroupMLP if model_config.arch == "mlp" else GroupTransformer
    return model_class(order, seed=seed, **settings)


def train_group_seed(task: GroupTask, model_config: GroupMLPConfig | GroupTransformerConfig,
                     config: GroupTrainConfig, seed: int, *,
                     on_log: Callable[[dict], None] | None = None) -> TrainedGroupModel:
    """Train one model, initialised from `seed`, on `task`'s train pairs; `on_log(point)` per curve point.

    1. check the task's split matches `config.train_fraction`; build the model and AdamW;
    2. at each logged epoch evaluate all pairs (`_evaluate`); once test accuracy reaches
       `stop_at_test_accuracy`, the run ends `extra_epochs` later;
    3. at each checkpoint epoch copy the state dict;
    4. step: float64 cross-entropy of the train pairs, backward, Grokfast filter if on, AdamW.
    """
    # 1) setup
    if task.train_fraction != config.train_fraction:
        raise UniversalityError(f"the task is split with train_fraction {task.train_fraction}, the config says "
                                f"{config.train_fraction}; build the task with config.train_fraction")
    torch.set_num_threads(resolve_threads(config.threads))
    model = build_group_model(model_config, task.group.order, seed)
    trainable = [p for p in model.parameters() if p.requires_grad]  # the paper's frozen biases stay out
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    left, right, target = task.left[task.train], task.right[task.train], task.target[task.train]  # [train]
    planned = set(checkpoint_epochs(config.epochs, config.checkpoints))
    curve, checkpoints, ema = [], {}, None
    last = config.epochs
    start = time.perf_counter()
    for epoch in range(config.epochs + 1):
        # 2) curve point; early stop
        if epoch % config.log_every == 0 or epoch == last:
            point = {"epoch": epoch, **_evaluate(model, task)}
            curve.append(point)
            if on_log is not None:
                on_log(point)
            stop = config.stop_at_test_accuracy
            if stop is not None and last == config.epochs and point["test_acc"] >= stop:
                last = min(last, epoch + config.extra_epochs)
        # 3) checkpoint
        if epoch in planned or epoch == last:
            checkpoints[epoch] = {name: t.detach().float().clone() for name, t in model.state_dict().items()}
        if epoch == last:
            break
        # 4) one full-batch step
        loss = F.cross_entropy(model(left, right).double(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grokfast:
            ema = _grokfast(trainable, ema, config.grokfast_alpha, config.grokfast_lambda)
        optimizer.step()
    grok = next((p["epoch"] for p in curve if p["test_acc"] >= GROK_ACCURACY), None)
    return TrainedGroupModel(seed=seed, model=model.eval(), curve=curve, checkpoints=checkpoints,
                             epochs_to_grok=grok, seconds=time.perf_counter() - start,
                             model_config=model_config, config=config)


def train_group_seeds(task: GroupTask, model_config: GroupMLPConfig | GroupTransformerConfig,
                      config: GroupTrainConfig, seeds: list[int], *,
                      on_log: Callable[[int, dict], None] | None = None) -> list[TrainedGroupModel]:
    """Train every seed on the same task and split, one after another (see the module docstring);
    `on_log(seed, point)` is called for every curve point."""
    if len(set(seeds)) != len(seeds):
        raise UniversalityError(f"seeds must be distinct, got {list(seeds)}")
    trained = []
    for seed in seeds:
        report = None if on_log is None else (lambda point, seed=seed: on_log(seed, point))
        trained.append(train_group_seed(task, model_config, config, seed, on_log=report))
    return trained


def save_group_model(directory: Path, trained: TrainedGroupModel, task: GroupTask, *,
                     extra: dict | None = None) -> None:
    """Write the final weights, every checkpoint and the metadata (plus `extra`, e.g. a step
    fingerprint) into `directory` (atomically)."""
    tensors = with_checkpoints(trained.model.state_dict(), trained.checkpoints)
    metadata = {
        "seed": trained.seed,
        "model": trained.model_config.model_dump(),
        "train": trained.config.model_dump(),
        "task": {"group": task.group.name, "order": task.group.order, "word": task.word,
                 "train_fraction": task.train_fraction, "split_seed": task.seed},
        "curve": trained.curve,
        "epochs_to_grok": trained.epochs_to_grok,
        "seconds": trained.seconds,
        "checkpoint_epochs": sorted(trained.checkpoints),
        **(extra or {}),
    }
    save_checkpoint(directory, tensors, metadata)


def load_group_model(directory: Path) -> tuple[TrainedGroupModel, dict]:
    """Rebuild a `save_group_model` directory: (trained seed, model in eval mode; metadata).

    The model is built from the saved settings, every tensor name and shape checked against it.
    `metadata["task"]` names the group, word, train fraction and split seed to rebuild the task.
    """
    loaded, metadata = read_checkpoint(directory)
    model_config = TypeAdapter(GroupModelConfig).validate_python(metadata["model"])
    model = build_group_model(model_config, metadata["task"]["order"], metadata["seed"])
    state = model.state_dict()
    expected = with_checkpoints(state, {epoch: state for epoch in metadata["checkpoint_epochs"]})
    check_tensors(directory, loaded, expected, fix="the weights do not match the model in metadata.json")
    model.load_state_dict({name: loaded[name] for name in state})
    checkpoints = {epoch: {name: loaded[f"checkpoints.{epoch}.{name}"] for name in state}
                   for epoch in metadata["checkpoint_epochs"]}
    trained = TrainedGroupModel(
        seed=metadata["seed"], model=model.eval(), curve=metadata["curve"], checkpoints=checkpoints,
        epochs_to_grok=metadata["epochs_to_grok"], seconds=metadata["seconds"], model_config=model_config,
        config=GroupTrainConfig(**metadata["train"]))
    return trained, metadata


@torch.no_grad()
def _evaluate(model: nn.Module, task: GroupTask) -> dict[str, float]:
    """Float64 cross-entropy and accuracy on the train and the test pairs."""
    logits = model(task.left, task.right).double()  # [pairs, order]
    correct = logits.argmax(dim=1) == task.target  # [pairs]
    losses = F.cross_entropy(logits, task.target, reduction="none")  # [pairs]
    train, test = task.train, ~task.train
    return {"train_loss": losses[train].mean().item(), "test_loss": losses[test].mean().item(),
            "train_acc": correct[train].double().mean().item(), "test_acc": correct[test].double().mean().item()}


def _grokfast(parameters: list[nn.Parameter], ema: list[torch.Tensor] | None, alpha: float,
              lamb: float) -> list[torch.Tensor]:
    """Grokfast-EMA (Lee et al. 2024, `gradfilter_ema`) over the trained `parameters`: ema = alpha ema
    + (1 - alpha) grad, starting at the first gradient; then grad += lamb ema. Returns the updated ema."""
    grads = [p.grad for p in parameters]
    if ema is None:
        ema = [g.detach().clone() for g in grads]
    else:
        torch._foreach_mul_(ema, alpha)
        torch._foreach_add_(ema, grads, alpha=1 - alpha)
    torch._foreach_add_(grads, ema, alpha=lamb)
    return ema
