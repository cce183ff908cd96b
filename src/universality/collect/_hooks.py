"""Capturing named submodule outputs with forward hooks, removed in `finally`.

| what                      | shape                  |
|---------------------------|------------------------|
| captured hook output      | [batch, pos, units]    |
| collected unit set        | [tokens, units]        |
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UniversalityError
from ..models._adapter_base import unknown_name

__all__ = ["capture", "select_unit_sets"]


@contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of `model` stores each named submodule's output in the
    yielded dict (detached). Hooks are removed on exit, even after an error."""
    modules = dict(model.named_modules())
    cache: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            if name not in modules:
                raise UniversalityError(unknown_name(name, [m for m in modules if m], "unit set or hook"))

            def store(module, inputs, output, name=name):
                cache[name] = output.detach()

            handles.append(modules[name].register_forward_hook(store))
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def select_unit_sets(available: dict[str, int], patterns: list[str]) -> list[str]:
    """Unit-set names matching any of `patterns` (exact names or shell patterns), in model order.

    >>> select_unit_sets({"blocks.0.mlp.hook_post": 8, "blocks.1.mlp.hook_post": 8}, ["blocks.*.mlp.hook_post"])
    ['blocks.0.mlp.hook_post', 'blocks.1.mlp.hook_post']
    """
    chosen = []
    for pattern in patterns:
        matches = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not matches:
            raise UniversalityError(unknown_name(pattern, available, "unit set or hook"))
        chosen += [m for m in matches if m not in chosen]
    return [n for n in available if n in chosen]

