"""A bounded shuffle buffer: a stream of [tokens, d_in] activation batches in, random minibatches out.

Activations arrive in order (tokens of one sequence side by side, then the next), and an SAE trained on
them in that order sees correlated minibatches. The buffer mixes them in fixed memory:

1. fill a preallocated [buffer_tokens, d_in] tensor from the stream;
2. draw a random permutation of the filled slots (a seeded `torch.Generator`) and serve its first half
   as minibatches of `batch_size` rows;
3. refill exactly the served slots from the stream, go to 2;
4. when the stream ends, serve what is left in random order.

A slot is refilled only after it is served, so every token of the stream is served exactly once,
except a last remainder shorter than half a minibatch (its FVU denominator would be noise), which is
dropped unless it is all there is. Each slot waits a geometric number of rounds (mean 2), so a minibatch
mixes tokens from about the last `buffer_tokens` x 1.5 of the stream.

>>> g = torch.Generator().manual_seed(0)
>>> stream = (torch.full((5, 2), float(i)) for i in range(4))  # 20 tokens
>>> [b.shape[0] for b in shuffled_batches(stream, d_in=2, buffer_tokens=8, batch_size=4, generator=g)]
[4, 4, 4, 4, 4]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from .._inputs import as_activations
from ..errors import UniversalityError

__all__ = ["shuffled_batches"]


def shuffled_batches(batches: Iterable[torch.Tensor], *, d_in: int, buffer_tokens: int, batch_size: int,
                     generator: torch.Generator, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Float32 minibatches [batch_size, d_in] (the last may be shorter) on `device`, drawn from `batches`
    through a buffer of `buffer_tokens` rows; `generator` (CPU) orders them.

    Raises `UniversalityError` for a batch that is not a real [tokens, d_in] tensor, holds NaN or
    infinite values, or for a stream with no tokens.
    """
    buffer = torch.empty(buffer_tokens, d_in, device=device)  # [buffer_tokens, d_in]
    source = _checked(batches, d_in, device)
    pending = torch.empty(0, d_in, device=device)  # tokens read from the stream, not yet in the buffer

    def fill(slots: torch.Tensor) -> int:
        """Copy the next stream tokens into `slots` (CPU int64 [n]); how many were filled."""
        nonlocal pending
        filled = 0
        while filled < len(slots):
            if len(pending) == 0:
                pending = next(source, None)
                if pending is None:
                    pending = torch.empty(0, d_in, device=device)
                    break
            take = min(len(slots) - filled, len(pending))
            buffer.index_copy_(0, slots[filled:filled + take].to(device), pending[:take])
            pending, filled = pending[take:], filled + take
        return filled

    live = torch.arange(fill(torch.arange(buffer_tokens)))  # slots holding tokens not yet served
    if len(live) == 0:
        raise UniversalityError("the activation stream is empty; pass an iterable of at least one "
                                "Tensor[tokens, d_in] with tokens > 0")
    # served per round: half the buffer in whole minibatches (at least one)
    half = max(batch_size, buffer_tokens // 2 // batch_size * batch_size)
    ended = len(live) < buffer_tokens
    while not ended:
        order = live[torch.randperm(len(live), generator=generator)]
        served = order[:half]
        for start in range(0, half, batch_size):
            yield buffer.index_select(0, served[start:start + batch_size].to(device))
        filled = fill(served)
        live = torch.cat([order[half:], served[:filled]])
        ended = filled < half
    order = live[torch.randperm(len(live), generator=generator)]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        if start == 0 or 2 * len(rows) >= batch_size:
            yield buffer.index_select(0, rows.to(device))


def _checked(batches: Iterable[torch.Tensor], d_in: int, device) -> Iterator[torch.Tensor]:
    """Each batch checked (real [tokens, d_in], finite) and as float32 on `device`; empty batches skipped."""
    try:
        iterator = iter(batches)
    except TypeError:
        raise UniversalityError(f"batches is a {type(batches).__name__}; pass an iterable of "
                                "Tensor[tokens, d_in] activations (a list, or a generator)") from None
    for index, batch in enumerate(iterator):
        x = as_activations(batch, f"activation batch {index}", units=d_in)
        if len(x) == 0:
            continue
        x = x.to(device=device, dtype=torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise UniversalityError(f"activation batch {index} has NaN or infinite values; "
                                    "drop those tokens or fix the model that produced them")
        yield x
