"""Source factories (`_worker`): what a worker runs once to stream its shards.

- `BatchSource`: the user's batches callable (`compare_activations(..., backend="ray")`).
- `ActivationSource`: models' activations over token rows, the experiment kinds; the models are
  rebuilt on the worker by a picklable loader, `pretrained_models` (paths: each worker loads them
  from its own disk or hub cache) or `trained_models` (the modules themselves, pickled with their
  weights).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..collect import stream_activations
from ..errors import UniversalityError
from ..models import adapt, load_model

__all__ = ["BatchSource", "takes_range", "ActivationSource", "pretrained_models", "trained_models"]


def takes_range(batches: Callable) -> bool:
    """True for `batches(start, stop)`, False for `batches()`; anything else is refused in one line."""
    try:
        parameters = inspect.signature(batches).parameters.values()
    except (TypeError, ValueError):
        parameters = None
    required = None if parameters is None else [
        p for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if required is None or len(required) not in (0, 2):
        raise UniversalityError("with backend='ray', batches must be a callable batches(start, stop) returning the "
                                "batches [start, stop), or batches() returning all of them")
    return len(required) == 2


@dataclass(frozen=True)
class BatchSource:
    """A source factory over the user's `batches`: `batches(start, stop)` when `ranged`, else
    `batches()` from which the worker skips to its shard with `itertools.islice` (the batches before
    it are made and dropped, so a ranged callable avoids that work)."""
    batches: Callable
    ranged: bool

    def __call__(self, device: str) -> Callable[[int, int], Iterator]:
        return self.shard

    def shard(self, start: int, stop: int) -> Iterator[tuple[dict, None]]:
        """(batch, None) for batches [start, stop)."""
        batches = self.batches(start, stop) if self.ranged else itertools.islice(self.batches(), start, stop)
        return ((batch, None) for batch in batches)


@dataclass(frozen=True)
class ActivationSource:
    """A source factory streaming models' unit activations over token rows (`stream_activations`).

    load : picklable callable, device -> {model name: ModelAdapter}; run once per worker
    tokens : LongTensor [rows, seq_len]
    unit_sets : names or patterns, or {model: names or patterns}
    batch_rows : rows per batch
    drop_tokens : token ids left out
    """
    load: Callable[[str], dict]
    tokens: torch.Tensor
    unit_sets: Sequence[str] | Mapping[str, Sequence[str]]
    batch_rows: int
    drop_tokens: Sequence[int] = ()

    def __call__(self, device: str) -> Callable[[int, int], Iterator]:
        adapters = self.load(device)

        def shard(start: int, stop: int) -> Iterator[tuple[dict, torch.Tensor]]:
            return stream_activations(adapters, self.tokens[:stop * self.batch_rows], unit_sets=self.unit_sets,
                                      batch_rows=self.batch_rows, drop_tokens=self.drop_tokens, start_batch=start,
                                      device=device, token_index=True)
        return shard


def pretrained_models(paths: Mapping[str, str], device: str) -> dict:
    """{name: `load_model(path, device)`} for {name: local directory or hub name}."""
    return {name: load_model(path, device=device) for name, path in paths.items()}


def trained_models(modules: Mapping[str, torch.nn.Module], device: str, **adapt_kwargs) -> dict:
    """{name: `adapt(module on device, name=name, **adapt_kwargs)`} for modules trained in this run."""
    return {name: adapt(module.to(device), name=name, **adapt_kwargs) for name, module in modules.items()}
