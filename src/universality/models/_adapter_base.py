"""`ModelAdapter`: one interface over every model family the toolkit reads (Hugging Face, the tiny
transformer, TransformerLens), with TransformerLens unit-set names.

| method / attribute                     | shape                                   |
|----------------------------------------|-----------------------------------------|
| `unit_sets`                            | {name: units}                           |
| `run(tokens, names)`                   | {name: [batch, pos, units]}             |
| `attention_patterns(tokens)`           | [layers, batch, heads, query, key]      |
| `logits(tokens, edits=...)`            | [batch, pos, vocab]                     |
| `weights()`                            | {TransformerLens name: float32 tensor}  |
| `attention_scale(layer)`, `rotary(positions)` | the factor on q . k; rotary (cos, sin) [pos, rotary_dim] or None |

A subclass says where each unit set lives (`_sites`: a module and whether the value is that module's
input or output) and how to run forward (`_forward`); reading and editing activations are the same
forward hooks for every family, attached for one forward pass and removed in `finally`.
An *edit* is a callable `activation [batch, pos, units] -> activation` that replaces the value in
the forward pass (the basis of interventions).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UniversalityError

__all__ = ["ModelAdapter", "Site", "unknown_name"]

Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """Where a unit set is read: `module`'s first positional input (`where="input"`) or its output
    (`"output"`; the first element when the module returns a tuple). `read` maps the value to the
    reported activation (e.g. a LayerNorm scale); such sites cannot be edited."""

    module: nn.Module
    where: str  # "input" | "output"
    read: Callable[[torch.Tensor], torch.Tensor] | None = None


def unknown_name(name: str, valid, what: str = "unit set") -> str:
    """One line: the unknown name, near matches, and every valid name."""
    valid = list(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"no {what} named {name!r}{hint} valid names: {', '.join(valid)}"


class ModelAdapter:
    """A model with named unit sets. Subclasses set the attributes below and implement `_sites`,
    `_forward`, `_patterns` and `weights`.

    Attributes
    ----------
    name : str
    kind : {'decoder', 'encoder'}
    n_layers, d_model, d_mlp, n_heads, d_head, vocab_size, n_ctx : int
    bos_token_id, pad_token_id : int or None
    norm_eps : float or None, the epsilon of the blocks' first norm (LayerNorm / RMSNorm), None if none
    tokenizer : a Hugging Face tokenizer, or None when the model has none
    unit_sets : {unit_set_name: units}
    device : torch.device
    """

    name: str
    kind: str
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    vocab_size: int
    n_ctx: int
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    norm_eps: float | None = None
    tokenizer = None
    unit_sets: dict[str, int]
    device: torch.device

    # -- subclass hooks ------------------------------------------------------------------------
    def _sites(self) -> dict[str, Site]:
        raise NotImplementedError

    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, *,
                 logits: bool = True) -> torch.Tensor | None:
        """Run the model once; return logits [batch, pos, vocab], or None when it has no head or
        `logits` is False (activations only: a model may then skip its unembedding)."""
        raise NotImplementedError

    def _patterns(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        raise NotImplementedError

    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def attention_scale(self, layer: int) -> float:
        """The factor on q . k in layer `layer`'s attention scores: 1 / sqrt(d_head) unless a model says otherwise."""
        return self.d_head ** -0.5

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Rotary position embedding (cos, sin) [pos, rotary_dim] applied to queries and keys at positions [pos]
        (HF convention: rotate_half), or None for models with learned or no positions."""
        return None

    # -- public API ----------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, tokens: torch.Tensor, names: list[str] | None = None, *,
            attention_mask: torch.Tensor | None = None,
            edits: dict[str, Edit] | None = None) -> dict[str, torch.Tensor]:
        """Activations `{unit_set: Tensor[batch, pos, units]}` (float, on the model's device) of the
        named unit sets (all by default) in one forward pass of tokens [batch, pos]; `edits` are
        applied in the same pass, and an edited unit set is reported after its edit."""
        names = list(self.unit_sets) if names is None else [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in self.unit_sets:
                raise UniversalityError(f"{self.name}: " + unknown_name(name, self.unit_sets))
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        with self._hooks(names, edits or {}) as cache:
            self._forward(tokens, attention_mask, logits=False)
        return {name: cache[name] for name in names}

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
               edits: dict[str, Edit] | None = None) -> torch.Tensor:
        """Logits [batch, pos, vocab] of tokens [batch, pos] (an encoder's MLM logits), with `edits`
        `{unit_set: callable([batch, pos, units]) -> [batch, pos, units]}` replacing activations."""
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        with self._hooks([], edits or {}):
            logits = self._forward(tokens, attention_mask)
        if logits is None:
            raise UniversalityError(f"{self.name} has no language-model head (its checkpoint holds the base "
                                    "model only), so it has no logits; use run() for activations")
        return logits

    @torch.no_grad()
    def attention_patterns(self, tokens: torch.Tensor, *,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities [layers, batch, heads, query, key] for tokens [batch, pos]."""
        tokens, attention_mask = self._check_tokens(tokens, attention_mask)
        return torch.stack(self._patterns(tokens, attention_mask))

    def require_tokenizer(self):
        """The tokenizer, or a one-line error when the model has none."""
        if self.tokenizer is None:
            raise UniversalityError(f"{self.name} has no tokenizer (none was saved with it); pass token ids, "
                                    "or save a tokenizer into the model directory")
        return self.tokenizer

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.kind}, layers={self.n_layers}, "
                f"d_model={self.d_model}, d_mlp={self.d_mlp}, heads={self.n_heads}, vocab={self.vocab_size})")

    # -- shared machinery ----------------------------------------------------------------------
    def _check_tokens(self, tokens, attention_mask):
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise UniversalityError(f"{self.name}: tokens must be an integer tensor [batch, pos], got {got}")
        if tokens.shape[1] > self.n_ctx:
            raise UniversalityError(f"{self.name}: cannot run {tokens.shape[1]} positions, the context is "
                                    f"n_ctx={self.n_ctx}; use shorter rows")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise UniversalityError(f"{self.name}: token ids must be in [0, {self.vocab_size}), got "
                                    f"[{int(tokens.min())}, {int(tokens.max())}]; were they made by another tokenizer?")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(tokens.shape):
                raise UniversalityError(f"{self.name}: attention_mask has shape {tuple(attention_mask.shape)}, "
                                        f"tokens have {tuple(tokens.shape)}; they must match")
            attention_mask = attention_mask.to(self.device).long()
        return tokens.to(self.device).long(), attention_mask

    @contextmanager
    def _hooks(self, names: list[str], edits: dict[str, Edit]) -> Iterator[dict[str, torch.Tensor]]:
        """Attach one hook per unit set that is read or edited; yield the cache they fill."""
        sites = self._sites()
        for name, edit in edits.items():
            if name not in sites:
                raise UniversalityError(f"{self.name}: cannot edit: " + unknown_name(name, sites))
            if sites[name].read is not None:
                raise UniversalityError(f"{self.name}: {name} is derived from other activations and cannot be edited")
            if not callable(edit):
                raise UniversalityError(f"{self.name}: the edit for {name} must be a callable "
                                        f"activation -> activation, got {type(edit).__name__}")
        cache: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name in [*edits, *(n for n in names if n not in edits)]:
                site = sites[name]
                hook = _make_hook(self.name, name, site, edits.get(name), cache if name in names else None)
                if site.where == "input":
                    handles.append(site.module.register_forward_pre_hook(hook))
                else:
                    handles.append(site.module.register_forward_hook(hook))
            yield cache
        finally:
            for handle in handles:
                handle.remove()


def _make_hook(model: str, name: str, site: Site, edit: Edit | None, cache: dict | None):
    """A pre-hook (site input) or forward hook (site output) that edits, then stores, the value."""

    def apply(value: torch.Tensor) -> torch.Tensor:
        if edit is not None:
            new = edit(value)
            if not isinstance(new, torch.Tensor) or new.shape != value.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise UniversalityError(f"{model}: the edit for {name} returned {got}, expected a tensor "
                                        f"of shape {tuple(value.shape)}")
            value = new.to(value.dtype)
        if cache is not None:
            cache[name] = (site.read(value) if site.read else value).detach()
        return value

    if site.where == "input":
        def pre_hook(module, args):
            value = apply(args[0])
            return (value, *args[1:]) if edit is not None else None
        return pre_hook

    def hook(module, args, output):
        if isinstance(output, tuple):
            value = apply(output[0])
            return (value, *output[1:]) if edit is not None else None
        value = apply(output)
        return value if edit is not None else None
    return hook
