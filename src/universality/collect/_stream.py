"""The one activation streamer: model adapters (`models.adapt` / `load_model`: Hugging Face, the tiny
transformer, group models, TransformerLens) over one token set, batch by batch.

| what                  | shape                                  |
|-----------------------|----------------------------------------|
| tokens                | [rows, pos]                            |
| attention_mask        | [rows, pos], 1 = real token            |
| one yielded batch     | {model: {unit_set: [tokens, units]}}   |

Each model runs forward once per batch of `batch_rows` rows; the kept tokens (not in
`drop_tokens`, not masked out) are flattened in the same order for every model, so rows align
across models. Memory is bounded by one batch. The output feeds `MomentAccumulator.update` and
`compare_activations` directly. `stream_layout` tells, from the same arguments and without a forward
pass, the layout {model: {unit_set: units}} and the first batch's token count (what a plan needs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from ..errors import UniversalityError
from ..tokens import check_same_tokenizer, keep_mask
from ._hooks import select_unit_sets

__all__ = ["stream_activations", "stream_layout", "batch_count"]


@torch.no_grad()
def stream_activations(adapters: dict, tokens: torch.Tensor, *, unit_sets: Sequence[str] | Mapping[str, Sequence[str]],
                       batch_rows: int,
                       drop_tokens: Sequence[int] = (), attention_mask: torch.Tensor | None = None,
                       start_batch: int = 0, device: str = "cpu", token_index: bool = False) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Yield `{model: {unit_set: Tensor[tokens, units]}}` (float32 on `device`) per batch.

    Parameters
    ----------
    adapters : {model_name: ModelAdapter}, sharing one tokenizer (checked)
    tokens : LongTensor [rows, pos]
    unit_sets : unit-set names or shell patterns (`blocks.*.mlp.hook_post`), resolved per model; or
        {model: names or patterns} when models name their units differently (several architectures)
    batch_rows : int >= 1, rows per forward pass
    drop_tokens : token ids left out (BOS, pad: see `universality.tokens.drop_token_ids`)
    attention_mask : [rows, pos] or None; masked positions are passed to the models and dropped
    start_batch : int, default=0, resume a stream from this batch
    token_index : bool, default=False, yield `(batch, index)` with index LongTensor [tokens]: each kept
        token's global position row * pos + position in `tokens` (what unit pages resolve to text)

    The whole plan (names, tokenizers, shapes) is checked before the first forward pass.
    """
    names = _checked_names(adapters, tokens, unit_sets, batch_rows, attention_mask)
    for start in range(start_batch * batch_rows, tokens.shape[0], batch_rows):
        rows = tokens[start:start + batch_rows]  # [batch, pos]
        mask = None if attention_mask is None else attention_mask[start:start + batch_rows]
        keep = keep_mask(rows, drop_tokens, mask)  # [batch, pos]
        batch = {}
        for model, adapter in adapters.items():
            acts = adapter.run(rows, names[model], attention_mask=mask)
            batch[model] = {s: acts[s][keep.to(acts[s].device)].to(device, torch.float32)  # [tokens, units]
                            for s in names[model]}
        if token_index:
            positions = torch.arange(start, start + rows.shape[0])[:, None] * tokens.shape[1] + torch.arange(tokens.shape[1])
            yield batch, positions[keep]  # [tokens], row-major like the activations
        else:
            yield batch


def stream_layout(adapters: dict, tokens: torch.Tensor, *, unit_sets: Sequence[str] | Mapping[str, Sequence[str]],
                  batch_rows: int, drop_tokens: Sequence[int] = (), attention_mask: torch.Tensor | None = None
                  ) -> tuple[dict[str, dict[str, int]], int]:
    """What `stream_activations` with the same arguments yields, checked the same way but without running
    a model: the layout {model: {unit_set: units}} (from each adapter's `unit_sets`) and the tokens its
    first batch keeps (0 when `tokens` has no rows)."""
    names = _checked_names(adapters, tokens, unit_sets, batch_rows, attention_mask)
    layout = {model: {name: adapters[model].unit_sets[name] for name in sets} for model, sets in names.items()}
    mask = None if attention_mask is None else attention_mask[:batch_rows]
    return layout, int(keep_mask(tokens[:batch_rows], drop_tokens, mask).sum())


def _checked_names(adapters: dict, tokens: torch.Tensor, unit_sets, batch_rows: int,
                   attention_mask: torch.Tensor | None) -> dict[str, list[str]]:
    """{model: its unit-set names}, after checking the whole plan (arguments of `stream_activations`)."""
    if not adapters:
        raise UniversalityError("pass at least one model to stream")
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
        raise UniversalityError(f"tokens must be an integer tensor [rows, pos], got "
                                f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise UniversalityError(f"batch_rows must be an integer >= 1, got {batch_rows!r}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(tokens.shape):
        raise UniversalityError(f"attention_mask has shape {tuple(attention_mask.shape)}, tokens have "
                                f"{tuple(tokens.shape)}; they must match")
    if isinstance(unit_sets, str):
        unit_sets = [unit_sets]
    check_same_tokenizer(adapters)
    names = {}
    for model, adapter in adapters.items():
        patterns = unit_sets.get(model, ()) if isinstance(unit_sets, Mapping) else unit_sets
        try:
            names[model] = select_unit_sets(adapter.unit_sets, [patterns] if isinstance(patterns, str) else list(patterns))
        except UniversalityError as error:
            raise UniversalityError(f"model {model!r}: {error}") from None
        if tokens.shape[1] > adapter.n_ctx:
            raise UniversalityError(f"model {model!r} has a context of {adapter.n_ctx} positions, the rows have "
                                    f"{tokens.shape[1]}; use shorter rows")
        if tokens.numel() and int(tokens.max()) >= adapter.vocab_size:
            raise UniversalityError(f"model {model!r} has {adapter.vocab_size} token ids, the tokens reach "
                                    f"{int(tokens.max())}; were they made by another tokenizer?")
    return names


def batch_count(rows: int, batch_rows: int) -> int:
    """Batches of `batch_rows` rows that cover `rows` rows (the last one may be short)."""
    return -(-rows // batch_rows)
