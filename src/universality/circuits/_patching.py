"""Which components carry a behaviour: activation patching of each attention head and MLP layer, and
its linear approximation, attribution patching (Nanda 2023, "Attribution patching: activation
patching at industrial scale"; Syed, Rager, Conmy 2023).

A *metric* maps logits [batch, pos, vocab] to one number per row [batch] (e.g. the IOI logit
difference); its mean over rows is patched. For a component c with clean activation a_c and
activation a'_c on the corrupted tokens:

    activation patching   effect_c      = metric(clean run with a_c := a'_c) - metric(clean run)
    attribution patching  attribution_c = sum_{pos, dims of c} dmetric/da_c (clean) * (a'_c - a_c)

the first-order Taylor estimate of effect_c. Attribution patching costs three passes for every
component at once (corrupted forward, clean forward, clean backward); activation patching one
forward per component.

Components, layer-major, are the `component_sites` of the adapter (`TinyAdapter`, and `HFAdapter` for decoders):

| component | site                        | activation, per row               |
|-----------|-----------------------------|-----------------------------------|
| head      | `blocks.{l}.attn.hook_z`    | [pos, d_head], slice h of [pos, heads * d_head] |
| mlp       | `blocks.{l}.hook_mlp_out`   | [pos, d_model]                    |

Tables have columns component ("head" | "mlp"), layer, head (-1 for an MLP) and the value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from ..errors import UniversalityError

__all__ = ["attribution_patching", "activation_patching", "rank_correlation", "run_components", "z_site",
           "mlp_site", "check_components", "top_components"]

Metric = Callable[[torch.Tensor], torch.Tensor]


def z_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def mlp_site(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def check_components(adapter) -> None:
    """Raise unless `adapter` exposes per-head outputs (`component_sites`) for every layer."""
    sites = getattr(adapter, "component_sites", None)
    if sites is None:
        raise UniversalityError(f"{adapter.name} ({type(adapter).__name__}) exposes no per-head outputs to patch; "
                                "circuits run on TinyAdapter models and Hugging Face decoders (models.load_model)")
    names = sites()
    missing = [z_site(l) for l in range(adapter.n_layers) if z_site(l) not in names]
    if missing:
        raise UniversalityError(f"{adapter.name} has no site {missing[0]}; its component_sites are {', '.join(names)}")


@contextmanager
def _grad(enabled: bool) -> Iterator[None]:
    with torch.enable_grad() if enabled else torch.no_grad():
        yield


def run_components(adapter, tokens: torch.Tensor, names: list[str], *,
                   replace: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                   grad: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass of tokens [batch, pos]: (logits [batch, pos, vocab], {site: activation}) for the
    sites in `names` (component sites or unit sets), after the edits in `replace`. With `grad` each
    read activation requires grad and stays in the graph (never detached: a later site must not cut
    an earlier one's paths through it), so `torch.autograd.grad(f(logits), acts)` gives the total
    d f / d activation, without computing gradients of the weights."""
    check_components(adapter)
    tokens, _ = adapter._check_tokens(tokens, None)
    replace = dict(replace or {})
    acts: dict[str, torch.Tensor] = {}

    def reader(name: str, before: Callable | None):
        def edit(value: torch.Tensor) -> torch.Tensor:
            value = before(value) if before is not None else value
            if grad and not value.requires_grad:  # the first site of a graph without weight gradients
                value = value.detach().requires_grad_(True)
            acts[name] = value
            return value
        return edit

    edits = {name: reader(name, replace.get(name)) for name in names}
    edits.update({name: fn for name, fn in replace.items() if name not in edits})
    with _grad(grad), adapter._hooks([], edits):
        logits = adapter._forward(tokens, None)  # [batch, pos, vocab]
    return logits, acts


def _metric_mean(metric: Metric, logits: torch.Tensor | None, batch: int, model: str) -> torch.Tensor:
    if logits is None:
        raise UniversalityError(f"{model} has no language-model head (its checkpoint holds the base model only), "
                                "so there is no metric on logits to patch; load a checkpoint with its LM head")
    value = metric(logits)
    if not isinstance(value, torch.Tensor) or value.shape not in ((batch,), ()):
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise UniversalityError(f"the metric must map logits [batch, pos, vocab] to a tensor [batch] (or a scalar), "
                                f"got {got}")
    return value.float().mean()


def _check_pair(adapter, clean: torch.Tensor, corrupt: torch.Tensor) -> None:
    if not isinstance(clean, torch.Tensor) or not isinstance(corrupt, torch.Tensor) or clean.shape != corrupt.shape:
        shapes = [list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (clean, corrupt)]
        raise UniversalityError(f"clean and corrupted tokens must be tensors of one shape [batch, pos], got "
                                f"{shapes[0]} and {shapes[1]}; corrupt each clean prompt in place")


def _table(values: dict[tuple[str, int, int], float], column: str) -> pd.DataFrame:
    keys = list(values)
    return pd.DataFrame({"component": [k[0] for k in keys], "layer": [k[1] for k in keys],
                         "head": [k[2] for k in keys], column: [values[k] for k in keys]})


def attribution_patching(adapter, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric, *,
                         mlps: bool = True) -> pd.DataFrame:
    """Attribution of every head (and MLP layer) for tokens clean, corrupt [batch, pos] (module docstring):
    columns component, layer, head, attribution (the metric's change, averaged over rows, that patching
    the corrupted activation in is estimated to cause). Three passes in all.

    1. corrupted forward: a'_c for every site;
    2. clean forward with every site in the autograd graph: a_c, and the metric;
    3. one backward: dmetric/da_c; attribution = sum over positions and the component's dims of grad * (a' - a).
    """
    _check_pair(adapter, clean, corrupt)
    layers, heads, d_head = adapter.n_layers, adapter.n_heads, adapter.d_head
    names = [z_site(l) for l in range(layers)] + ([mlp_site(l) for l in range(layers)] if mlps else [])
    # 1) corrupted activations
    _, corrupted = run_components(adapter, corrupt, names)
    # 2) clean activations, kept in the graph, and the metric
    logits, acts = run_components(adapter, clean, names, grad=True)
    value = _metric_mean(metric, logits, clean.shape[0], adapter.name)
    # 3) gradients of the mean metric at every site
    grads = dict(zip(names, torch.autograd.grad(value, [acts[n] for n in names], allow_unused=True)))
    out: dict[tuple[str, int, int], float] = {}
    for l in range(layers):
        name = z_site(l)
        grad = grads[name] if grads[name] is not None else torch.zeros_like(acts[name])
        product = grad * (corrupted[name] - acts[name].detach())  # [batch, pos, heads * d_head]
        # summed over pos and d_head, then over rows: the metric is a mean, so its gradient carries the 1/batch
        per_head = product.view(*product.shape[:2], heads, d_head).sum(dim=(0, 1, 3))  # [heads]
        out.update({("head", l, h): float(per_head[h]) for h in range(heads)})
    for l in range(layers if mlps else 0):
        name = mlp_site(l)
        grad = grads[name] if grads[name] is not None else torch.zeros_like(acts[name])
        out[("mlp", l, -1)] = float((grad * (corrupted[name] - acts[name].detach())).sum())
    return _table(out, "attribution")


@torch.no_grad()
def activation_patching(adapter, clean: torch.Tensor, corrupt: torch.Tensor, metric: Metric, *,
                        heads: list[tuple[int, int]] | None = None, mlps: bool = True) -> pd.DataFrame:
    """effect_c = metric(clean run with component c from the corrupted run) - metric(clean run), for every head
    (or the (layer, head) pairs in `heads`) and, with `mlps`, every MLP layer: one forward per component, plus
    one clean and one corrupted pass. Columns component, layer, head, effect."""
    _check_pair(adapter, clean, corrupt)
    layers, n_heads, d_head = adapter.n_layers, adapter.n_heads, adapter.d_head
    if heads is None:
        heads = [(l, h) for l in range(layers) for h in range(n_heads)]
    for layer, head in heads:
        if not (0 <= layer < layers and 0 <= head < n_heads):
            raise UniversalityError(f"{adapter.name} has {layers} layers of {n_heads} heads; head ({layer}, {head}) "
                                    f"is not one of them (layer in [0, {layers}), head in [0, {n_heads}))")
    names = sorted({z_site(l) for l, _ in heads}) + ([mlp_site(l) for l in range(layers)] if mlps else [])
    _, corrupted = run_components(adapter, corrupt, names)
    clean_logits, _ = run_components(adapter, clean, [])
    base = float(_metric_mean(metric, clean_logits, clean.shape[0], adapter.name))
    out: dict[tuple[str, int, int], float] = {}
    for layer, head in heads:
        cut = slice(head * d_head, (head + 1) * d_head)
        source = corrupted[z_site(layer)]

        def patch(value: torch.Tensor, cut=cut, source=source) -> torch.Tensor:
            value = value.clone()
            value[..., cut] = source[..., cut]  # [batch, pos, d_head] of this head
            return value
        logits, _ = run_components(adapter, clean, [], replace={z_site(layer): patch})
        out[("head", layer, head)] = float(_metric_mean(metric, logits, clean.shape[0], adapter.name)) - base
    for l in range(layers if mlps else 0):
        logits, _ = run_components(adapter, clean, [], replace={mlp_site(l): lambda v, s=corrupted[mlp_site(l)]: s})
        out[("mlp", l, -1)] = float(_metric_mean(metric, logits, clean.shape[0], adapter.name)) - base
    return _table(out, "effect")


def rank_correlation(attribution: pd.DataFrame, effect: pd.DataFrame, *, component: str | None = "head",
                     absolute: bool = False) -> float:
    """Spearman rank correlation of `attribution` and `effect` over the components both tables hold
    (only `component` rows unless None; of |values| with `absolute`, the ranking by importance whatever
    the sign); NaN when fewer than 3 are shared or either is constant."""
    joined = attribution.merge(effect, on=["component", "layer", "head"])
    if component is not None:
        joined = joined[joined["component"] == component]
    if absolute:
        joined = joined.assign(attribution=joined["attribution"].abs(), effect=joined["effect"].abs())
    if len(joined) < 3 or joined["attribution"].nunique() < 2 or joined["effect"].nunique() < 2:
        return float("nan")
    return float(spearmanr(joined["attribution"], joined["effect"]).statistic)


def top_components(table: pd.DataFrame, column: str, count: int) -> list[tuple[str, int, int]]:
    """The `count` components with the largest |value| in `column`, largest first."""
    order = np.argsort(-table[column].abs().to_numpy(), kind="stable")[:count]
    rows = table.iloc[order]
    return list(zip(rows["component"], rows["layer"].astype(int), rows["head"].astype(int)))
