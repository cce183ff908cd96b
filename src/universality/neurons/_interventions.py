"""Interventions on named units: set, zero, scale or mean-ablate units inside the forward pass and
measure what changes in the next-token distribution.

| name                          | returns                                                       |
|-------------------------------|---------------------------------------------------------------|
| `set_units(units, value)`     | a `UnitEdit`: activation[..., units] = value                  |
| `zero_units(units)`           | a `UnitEdit`: activation[..., units] = 0                      |
| `scale_units(units, factor)`  | a `UnitEdit`: activation[..., units] *= factor                |
| `mean_ablate(units, means)`   | a `UnitEdit`: activation[..., units] = means [len(units)]     |
| `intervene(adapter, tokens, edits)` | {metric: float}: the edited run against the clean run   |
| `next_token_metrics(logits, tokens)` | loss, entropy and the log-probabilities [batch, pos-1, vocab] |

`units` is a list of indices within the unit set (`[]` edits nothing), or None for every unit.
A value, factor or mean is a number or one number per listed unit; edits apply at every position.

Metrics (decoders; an encoder's logits are scored the same way, which is rarely meaningful):
- `loss`: mean cross-entropy of tokens[:, 1:] under logits[:, :-1] (nats);
- `entropy`: mean entropy of the next-token distributions softmax(logits[:, :-1]) (nats);
- `kl`: mean KL(clean || edited) of those distributions (nats);
- `ln_scale`: mean `ln_final.hook_scale` (the final norm's divisor), when the adapter has it.
Each comes as `<metric>_clean` and `<metric>` (edited); `kl` only edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import UniversalityError

__all__ = ["UnitEdit", "set_units", "zero_units", "scale_units", "mean_ablate", "intervene", "next_token_metrics",
           "run_with_edits", "measure"]

LN_SCALE = "ln_final.hook_scale"


@dataclass(frozen=True)
class UnitEdit:
    """One edit of a unit set: `op` in {'set', 'scale'} applied to `units` (None = all) with `value`
    (a number or [len(units)]). Build one with `set_units`, `zero_units`, `scale_units`, `mean_ablate`."""

    units: tuple[int, ...] | None
    op: str  # "set" | "scale"
    value: torch.Tensor  # [] or [len(units)], float64

    def __call__(self, activation: torch.Tensor) -> torch.Tensor:
        """activation [batch, pos, units] -> an edited copy of the same shape."""
        out = activation.clone()
        if self.units is not None and not self.units:
            return out
        index = slice(None) if self.units is None else list(self.units)
        value = self.value.to(out.device, out.dtype)
        out[..., index] = value if self.op == "set" else out[..., index] * value
        return out


def _edit(units, op: str, value, what: str) -> UnitEdit:
    if units is not None:
        units = tuple(int(u) for u in (units.tolist() if isinstance(units, torch.Tensor) else units))
    value = torch.as_tensor(value, dtype=torch.float64)
    if value.ndim > 1 or (value.ndim == 1 and (units is None or value.numel() != len(units))):
        count = "a number" if units is None else f"a number or {len(units)} numbers (one per unit)"
        raise UniversalityError(f"{what} has shape {list(value.shape)}; pass {count}")
    return UnitEdit(units, op, value)


def set_units(units: Sequence[int] | None, value) -> UnitEdit:
    """activation[..., units] = value (a number or [len(units)]) at every position.

    >>> set_units([1], 5.0)(torch.zeros(1, 2, 3))[0, 0].tolist()
    [0.0, 5.0, 0.0]
    """
    return _edit(units, "set", value, "value")


def zero_units(units: Sequence[int] | None) -> UnitEdit:
    """activation[..., units] = 0 (zero ablation)."""
    return _edit(units, "set", 0.0, "value")


def scale_units(units: Sequence[int] | None, factor) -> UnitEdit:
    """activation[..., units] *= factor (a number or [len(units)])."""
    return _edit(units, "scale", factor, "factor")


def mean_ablate(units: Sequence[int] | None, means) -> UnitEdit:
    """activation[..., units] = means, one mean per listed unit [len(units)] (e.g. over a reference set)."""
    return _edit(units, "set", means, "means")


def run_with_edits(adapter, tokens: torch.Tensor, edits: dict, names: Sequence[str] = (), *,
                   patterns: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass with `edits`: (logits [batch, pos, vocab], or attention patterns
    [layers, batch, heads, query, key] when `patterns`; {name: [batch, pos, units]} of `names`).

    Reads and edits share the adapter's hook context, so logits, patterns and activations come from
    the same pass (`adapter.logits` alone cannot return activations, nor `attention_patterns` edit)."""
    for name in names:
        if name not in adapter.unit_sets:
            raise UniversalityError(f"{adapter.name}: no unit set {name!r} to read")
    with adapter._hooks(list(names), dict(edits)) as cache:
        out = adapter.attention_patterns(tokens) if patterns else adapter.logits(tokens)
    return out, dict(cache)


def next_token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(loss, entropy, log-probabilities [batch, pos - 1, vocab]) of logits [batch, pos, vocab] for
    tokens [batch, pos]: cross-entropy of tokens[:, 1:] under logits[:, :-1], and mean entropy."""
    if tokens.shape[1] < 2:
        raise UniversalityError(f"next-token metrics need at least 2 positions, got tokens {list(tokens.shape)}")
    logp = logits[:, :-1].double().log_softmax(dim=-1)  # [batch, pos - 1, vocab]
    targets = tokens[:, 1:].to(logp.device)  # [batch, pos - 1]
    loss = -logp.gather(-1, targets[..., None]).mean()
    entropy = -(logp.exp() * logp).sum(dim=-1).mean()
    return float(loss), float(entropy), logp


def intervene(adapter, tokens: torch.Tensor, edits: dict[str, UnitEdit]) -> dict[str, float]:
    """Effects of `edits` {unit_set: UnitEdit (or any callable [batch, pos, units] -> same)} on
    tokens [batch, pos]: loss, entropy, ln_scale (clean and edited) and kl (see the module docstring).

    >>> from universality.config import ModelConfig
    >>> from universality.models import TinyTransformer, adapt
    >>> tiny = adapt(TinyTransformer(ModelConfig(d_model=8, n_heads=2, d_mlp=16, n_layers=1), vocab_size=10, n_ctx=6))
    >>> out = intervene(tiny, torch.ones(2, 6, dtype=torch.long), {"blocks.0.mlp.hook_post": zero_units([])})
    >>> out["kl"]
    0.0
    """
    # 1) the clean run and the edited run, each one forward pass with its next-token metrics
    clean, logp0 = measure(adapter, tokens, {})
    edited, logp1 = measure(adapter, tokens, edits)
    # 2) KL(clean || edited) per position, averaged
    kl = float((logp0.exp() * (logp0 - logp1)).sum(dim=-1).mean())
    return {**{f"{k}_clean": v for k, v in clean.items()}, **edited, "kl": kl}


def measure(adapter, tokens: torch.Tensor, edits: dict) -> tuple[dict[str, float], torch.Tensor]:
    """({loss, entropy[, ln_scale]}, log-probabilities [batch, pos - 1, vocab]) of one run with `edits`."""
    for name in edits:
        if name not in adapter.unit_sets:
            raise UniversalityError(f"{adapter.name}: no unit set {name!r} to edit; unit sets: "
                                    f"{', '.join(adapter.unit_sets)}")
        units = getattr(edits[name], "units", None)
        if units and not all(0 <= u < adapter.unit_sets[name] for u in units):
            raise UniversalityError(f"{adapter.name}: {name} has {adapter.unit_sets[name]} units; edit indices "
                                    f"must be in [0, {adapter.unit_sets[name]}), got {min(units)}..{max(units)}")
    reads = [LN_SCALE] if LN_SCALE in adapter.unit_sets else []
    logits, acts = run_with_edits(adapter, tokens, edits, reads)
    loss, entropy, logp = next_token_metrics(logits, tokens)
    out = {"loss": loss, "entropy": entropy}
    if reads:
        out["ln_scale"] = float(acts[LN_SCALE].double().mean())
    return out, logp
