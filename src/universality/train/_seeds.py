"""Train one tiny transformer per seed on the synthetic language; save and load checkpoints.

A seed fixes the initialisation and, when `TrainConfig.data == "per_seed"`, the training rows
(with `TrainConfig.ioi_fraction` > 0, that fraction of every batch is indirect-object prompts, `tasks.IOITask`);
with `data == "shared"` every seed reads the rows of `TrainConfig.data_seed` in the same order.
Rows are drawn in chunks of `CHUNK_STEPS` steps, each chunk from a seed derived from
(data seed, chunk index), so a run never touches the global RNG.

Optimiser and schedule follow nanoGPT's `train.py`: AdamW with betas (0.9, 0.98), weight decay
on matrices only, linear warmup then cosine decay to lr / 10.

With `TrainConfig.checkpoints` > 0 a seed also keeps its state dict after `checkpoint_epochs(steps,
checkpoints)` steps (log-spaced from 0, the initialisation, to `steps`, the final model), for
universality over training.

Checkpoint directory (see `save_checkpoint`):

    weights.safetensors   one tensor per `state_dict` entry, float32 (and, saved `with_checkpoints`,
                          "checkpoints.{step}.{name}" for every kept checkpoint)
    metadata.json         whatever the caller passes (resolved config, seed, curve, checkpoint_steps ...)

>>> from universality.config import LanguageConfig, ModelConfig, TrainConfig
>>> language = SyntheticLanguage(LanguageConfig(seq_len=16, position_period=8, repeat_len=3))
>>> small = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32)
>>> trained = train_seed(language, small, TrainConfig(steps=3, batch_size=4, threads=1), seed=0)
>>> [point["step"] for point in trained.curve]
[0, 2]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._threads import resolve_threads
from ..config import ModelConfig, TrainConfig
from .._rundir import file_digest, save_tensors
from ..errors import UniversalityError
from ..models import TinyTransformer
from ..tasks import IOITask, SyntheticLanguage

__all__ = ["TrainedModel", "train_seed", "train_seeds", "save_checkpoint", "load_checkpoint",
           "load_checkpoint_models", "with_checkpoints", "checkpoint_epochs"]

CHUNK_STEPS = 64  # steps of rows drawn at once: sampling is a loop over positions, cheap per row
BETAS = (0.9, 0.98)
MIN_LR_FRACTION = 0.1  # the cosine decays to lr * 0.1 (nanoGPT: min_lr ~= learning_rate / 10)
WEIGHTS_FILE, METADATA_FILE = "weights.safetensors", "metadata.json"


@dataclass
class TrainedModel:
    """One trained seed.

    seed : int
    model : TinyTransformer, in eval mode
    curve : list of {"step": int, "loss": float}, every `log_every` steps from step 0, and the last
    seconds : float, wall time of the training loop
    checkpoints : {step: state dict of float32 tensors} after that many steps (`TrainConfig.checkpoints`)
    """

    seed: int
    model: TinyTransformer
    curve: list[dict]
    seconds: float
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)


def train_seed(
    language: SyntheticLanguage,
    model_config: ModelConfig,
    train_config: TrainConfig,
    seed: int,
    *,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainedModel:
    """Train one model with next-token cross-entropy; `on_step(step, loss)` is called every step.

    1. initialise from `seed`;
    2. each step: rows [batch_size, seq_len] from `training_batches`, the lr from `learning_rate`;
    3. loss = mean cross-entropy of token t+1 given tokens <= t, over all rows and positions;
    4. keep the state dict after each of `checkpoint_epochs(steps, checkpoints)` steps.
    """
    torch.set_num_threads(resolve_threads(train_config.threads))  # only float rounding depends on it
    model = TinyTransformer(model_config, vocab_size=language.vocab_size,
                            n_ctx=language.config.seq_len, seed=seed).to(device)
    optimizer = _adamw(model, train_config)
    curve: list[dict] = []
    planned, checkpoints = set(checkpoint_epochs(train_config.steps, train_config.checkpoints)), {}

    def keep(done: int) -> None:
        if done in planned:
            checkpoints[done] = {name: t.detach().float().cpu().clone() for name, t in model.state_dict().items()}
    keep(0)
    start = time.perf_counter()
    for step, tokens in enumerate(training_batches(language, train_config, seed)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_config)
        tokens = tokens.to(device)
        loss = next_token_loss(model(tokens), tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        keep(step + 1)
        if step % train_config.log_every == 0 or step == train_config.steps - 1:
            curve.append({"step": step, "loss": value})
        if on_step is not None:
            on_step(step, value)
    return TrainedModel(seed=seed, model=model.eval(), curve=curve, seconds=time.perf_counter() - start,
                        checkpoints=checkpoints)


def train_seeds(
    language: SyntheticLanguage,
    model_config: ModelConfig,
    train_config: TrainConfig,
    seeds: list[int],
    *,
    device: str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[TrainedModel]:
    """Train every seed, one after another; `on_step(seed, step, loss)` is called every step.

    One after another, not as a vmapped ensemble: for the demo config on 2 CPU threads the
    ensemble ran at 0.91-1.0x the sequential speed (`benchmarks/bench_training.py`).
    """
    trained = []
    for seed in seeds:
        report = None if on_step is None else (lambda step, loss, seed=seed: on_step(seed, step, loss))
        trained.append(train_seed(language, model_config, train_config, seed,
                                  device=device, on_step=report))
    return trained


def training_batches(language: SyntheticLanguage, train_config: TrainConfig,
                     seed: int) -> Iterator[torch.Tensor]:
    """The `steps` batches of tokens [batch_size, seq_len] that `seed` trains on, in order."""
    data_seed = seed if train_config.data == "per_seed" else train_config.data_seed
    rows = train_config.batch_size
    # the first round(ioi_fraction * rows) rows of every batch are indirect-object prompts (off by default)
    ioi_rows = round(train_config.ioi_fraction * rows)
    task = IOITask(language, train_config.ioi) if ioi_rows else None
    for chunk_start in range(0, train_config.steps, CHUNK_STEPS):
        chunk_steps = min(CHUNK_STEPS, train_config.steps - chunk_start)
        chunk_seed = _derive_seed(data_seed, chunk_start // CHUNK_STEPS)
        tokens = language.sample(chunk_steps * rows, seed=chunk_seed).tokens  # [chunk rows, seq_len]
        if task is not None:  # [chunk_steps, rows, seq_len]: the task's rows first in each batch
            task_rows = task.training_rows(chunk_steps * ioi_rows, seed=_derive_seed(chunk_seed, 1))
            tokens = tokens.view(chunk_steps, rows, -1)
            tokens[:, :ioi_rows] = task_rows.view(chunk_steps, ioi_rows, -1)
            tokens = tokens.view(chunk_steps * rows, -1)
        yield from tokens.split(rows)


def learning_rate(step: int, train_config: TrainConfig) -> float:
    """The learning rate at `step` (0-based), as in nanoGPT's `get_lr`."""
    lr, warmup, steps = train_config.lr, train_config.warmup_steps, train_config.steps
    # 1) linear warmup for warmup_steps steps
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    # 2) cosine decay from lr down to lr * MIN_LR_FRACTION at the last step
    progress = (step - warmup) / max(1, steps - 1 - warmup)  # 0 -> 1
    min_lr = lr * MIN_LR_FRACTION
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [batch, pos, vocab] at t against tokens [batch, pos] at t + 1."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def save_checkpoint(directory: Path, model: nn.Module | Mapping[str, torch.Tensor], metadata: dict) -> None:
    """Write `weights.safetensors` (`model`'s state dict, or a name -> tensor mapping) and
    `metadata.json` into `directory`, atomically.

    1. write both files into a temporary sibling directory;
    2. move an older `directory` aside, rename the new one into place, delete the old one.
    `metadata.json` records the weights' sha256 (`weights_sha256`), so a damaged file is detected.
    A reader never sees a half-written file: it finds the old checkpoint, the new one, or (for
    the instant between the two renames) none.
    """
    directory = Path(directory)
    try:
        json.dumps(metadata)
    except TypeError as error:
        raise UniversalityError(f"checkpoint metadata is not JSON serialisable: {error}") from None
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    try:
        temporary.mkdir()
        save_tensors(temporary / WEIGHTS_FILE, weights)
        digest = file_digest(temporary / WEIGHTS_FILE)  # checked on load: a damaged file is retrained
        (temporary / METADATA_FILE).write_text(
            json.dumps({**metadata, "weights_sha256": digest}, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            directory.rename(old)
        temporary.rename(directory)
    finally:  # a full disk or a kill mid-write leaves no temporary directory behind
        shutil.rmtree(temporary, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def with_checkpoints(state: Mapping[str, torch.Tensor],
                     checkpoints: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`state` plus every checkpoint's tensors as "checkpoints.{step}.{name}", for `save_checkpoint`."""
    tensors = dict(state)
    for step, saved in checkpoints.items():
        tensors.update({f"checkpoints.{step}.{name}": tensor for name, tensor in saved.items()})
    return tensors


def checkpoint_epochs(epochs: int, count: int) -> list[int]:
    """Step (epoch) 0 and `count` - 1 log-spaced steps in [1, epochs], duplicates removed.

    >>> checkpoint_epochs(1000, 5)
    [0, 1, 10, 100, 1000]
    """
    if count == 0:
        return []
    spaced = np.rint(np.geomspace(1, epochs, count - 1)).astype(int).tolist() if count > 1 else []
    return sorted({0, *spaced})


def load_checkpoint(directory: Path, model_config: ModelConfig, *, vocab_size: int,
                    n_ctx: int) -> tuple[TinyTransformer, dict]:
    """Build a `TinyTransformer` from the config and load the checkpoint in `directory` into it.

    Every tensor name and shape (of the kept checkpoints, `metadata["checkpoint_steps"]`, too) is
    checked against the built model; the first mismatch raises `UniversalityError`. Returns (model in
    eval mode, metadata).
    """
    model, loaded, metadata = _checked_load(directory, model_config, vocab_size, n_ctx)
    model.load_state_dict({name: loaded[name] for name in model.state_dict()})
    return model.eval(), metadata


def load_checkpoint_models(directory: Path, model_config: ModelConfig, *, vocab_size: int,
                           n_ctx: int) -> dict[int, TinyTransformer]:
    """{step: the model after that many steps, in eval mode} for the checkpoints `directory` keeps."""
    model, loaded, metadata = _checked_load(directory, model_config, vocab_size, n_ctx)
    models = {}
    for step in metadata.get("checkpoint_steps", []):
        models[step] = TinyTransformer(model_config, vocab_size=vocab_size, n_ctx=n_ctx)
        models[step].load_state_dict({name: loaded[f"checkpoints.{step}.{name}"] for name in model.state_dict()})
        models[step].eval()
    return models


def _checked_load(directory: Path, model_config: ModelConfig, vocab_size: int, n_ctx: int):
    """(a fresh model of the config, the checked tensors, metadata) of the checkpoint in `directory`."""
    loaded, metadata = read_checkpoint(directory)
    model = TinyTransformer(model_config, vocab_size=vocab_size, n_ctx=n_ctx)
    state = model.state_dict()
    expected = with_checkpoints(state, {step: state for step in metadata.get("checkpoint_steps", [])})
    check_tensors(directory, loaded, expected, fix="check model, vocab_size and n_ctx")
    return model, loaded, metadata


def read_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and metadata saved in `directory` by `save_checkpoint`, not yet checked."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for file in (WEIGHTS_FILE, METADATA_FILE):
        if not (directory / file).is_file():
            raise UniversalityError(f"checkpoint {str(directory)!r} has no {file}; train or save it first")
    return load_file(str(directory / WEIGHTS_FILE)), json.loads((directory / METADATA_FILE).read_text())


def check_tensors(directory: Path, loaded: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  *, fix: str) -> None:
    """Raise `UniversalityError` at the first name or shape in `loaded` that `expected` does not match."""
    directory = Path(directory)
    for name, tensor in expected.items():
        if name not in loaded:
            raise UniversalityError(f"checkpoint {str(directory)!r} is missing tensor {name!r}")
        if loaded[name].shape != tensor.shape:
            raise UniversalityError(
                f"checkpoint {str(directory)!r}: tensor {name!r} has shape {list(loaded[name].shape)}, "
                f"the model config expects {list(tensor.shape)}; {fix}")
    unexpected = sorted(set(loaded) - set(expected))
    if unexpected:
        raise UniversalityError(
            f"checkpoint {str(directory)!r} has tensor {unexpected[0]!r}, which the model config does not")


def _adamw(model: TinyTransformer, train_config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (weights, embeddings), none on biases and LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train_config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train_config.lr, betas=BETAS)


def _derive_seed(seed: int, index: int) -> int:
    """An independent 63-bit seed for stream `index` of `seed` (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
