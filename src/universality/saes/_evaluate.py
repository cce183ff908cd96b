"""How well an SAE reconstructs a stream of activations, and how sparsely.

| key                 | type                   | meaning                                                        |
|---------------------|------------------------|----------------------------------------------------------------|
| `fvu`               | float                  | sum ||x - x_hat||^2 / sum ||x - mean||^2 over the whole stream |
| `mse`               | float                  | sum ||x - x_hat||^2 / tokens                                   |
| `l0`                | float                  | mean number of active latents per token                        |
| `dead_latents`      | int                    | latents never active over the stream                           |
| `firing_frequency`  | float64 Tensor[latents] | fraction of tokens on which each latent is active             |
| `tokens`            | int                    | tokens evaluated                                               |

The denominator uses the stream's mean, kept per dimension in float64 and merged batch by batch with
Chan's update (each batch centred on its own mean), so an offset far above the spread (residual streams
with a large mean) loses nothing to cancellation. Latents are encoded with the SAE's inference rule
(`SAE.encode`); the CE increase with the SAE spliced into a model uses `splice_hook`.

>>> sae = SAE(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2))
>>> result = evaluate(sae, [torch.tensor([[1.0, 0.0], [0.0, 2.0]])])
>>> result["fvu"], result["l0"], result["dead_latents"]
(0.0, 1.0, 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .._inputs import as_activations
from ..errors import UniversalityError
from ._sae import SAE

__all__ = ["evaluate", "ReconstructionStats", "splice_hook"]


def evaluate(sae: SAE, batches: Iterable[torch.Tensor]) -> dict:
    """FVU, MSE, mean L0, dead latents and per-latent firing frequency of `sae` over `batches`, an
    iterable of Tensor[tokens, d_in] (read once); see the module's table. Runs on the SAE's device
    and dtype; sums in float64."""
    if not isinstance(sae, SAE):
        raise UniversalityError(f"evaluate takes an SAE, got a {type(sae).__name__}; load one with universality.saes")
    try:
        iterator = iter(batches)
    except TypeError:
        raise UniversalityError(f"batches is a {type(batches).__name__}; pass an iterable of "
                                "Tensor[tokens, d_in] activations") from None
    stats = ReconstructionStats(sae)
    with torch.no_grad():
        for index, batch in enumerate(iterator):
            x = as_activations(batch, f"activation batch {index}", units=sae.d_in)
            if len(x):
                x = x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
                active = sae.encode(x)  # [n, latents]
                stats.update(x, active, sae.decode(active))
    return stats.result()


class ReconstructionStats:
    """`evaluate`'s sums, one batch at a time: for a pass that encodes once and reads the latents for
    more than this (a run's SAE step), or reconstructs one model's activations by another's SAE."""

    def __init__(self, sae: SAE):
        device = sae.W_dec.device
        self.tokens = 0
        self.mean = torch.zeros(sae.d_in, dtype=torch.float64, device=device)  # [d_in], the stream's mean so far
        self.spread = torch.zeros(sae.d_in, dtype=torch.float64, device=device)  # [d_in], sum of (x - mean)^2
        self.squared_error = torch.zeros((), dtype=torch.float64, device=device)
        self.fired = torch.zeros(sae.latents, dtype=torch.float64, device=device)  # [latents], tokens active

    def update(self, x: torch.Tensor, active: torch.Tensor | None, reconstruction: torch.Tensor) -> None:
        """Add x [n, d_in], its latents [n, latents] (None: not counted) and its reconstruction [n, d_in]."""
        n = len(x)
        if n == 0:
            return
        self.squared_error += (x - reconstruction).double().square().sum()
        if active is not None:
            self.fired += (active != 0).sum(0, dtype=torch.float64)
        # Chan's merge of (tokens, mean, spread) with the batch's own (n, mean, spread)
        wide = x.double()
        batch_mean = wide.mean(0)
        delta = batch_mean - self.mean
        self.spread += (wide - batch_mean).square().sum(0) + delta.square() * (self.tokens * n / (self.tokens + n))
        self.mean += delta * (n / (self.tokens + n))
        self.tokens += n

    def result(self) -> dict:
        """The module table's values over everything added."""
        if self.tokens == 0:
            raise UniversalityError("the activation stream is empty; pass at least one Tensor[tokens, d_in] "
                                    "with tokens > 0")
        total = float(self.spread.sum())
        error_sum = float(self.squared_error)
        if not torch.isfinite(self.squared_error):
            raise UniversalityError("the reconstruction error is NaN or infinite; check the activations for NaN "
                                    "or infinite values")
        return {
            "fvu": error_sum / total if total > 0 else float("nan"),  # a constant stream has no variance to explain
            "mse": error_sum / self.tokens,
            "l0": float(self.fired.sum()) / self.tokens,
            "dead_latents": int((self.fired == 0).sum()),
            "firing_frequency": (self.fired / self.tokens).cpu(),
            "tokens": self.tokens,
        }


def splice_hook(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function [..., d_in] -> [..., d_in] replacing activations by the SAE's reconstruction (same shape,
    dtype and device as its input), for a forward hook measuring the loss with the SAE spliced in.

    >>> sae = SAE(torch.eye(2), torch.zeros(2), torch.eye(2), torch.zeros(2))
    >>> splice_hook(sae)(torch.ones(3, 4, 2)).shape
    torch.Size([3, 4, 2])
    """
    if not isinstance(sae, SAE):
        raise UniversalityError(f"splice_hook takes an SAE, got a {type(sae).__name__}")

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[-1] != sae.d_in:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise UniversalityError(f"the spliced activations have shape {shape}; the SAE expects [..., {sae.d_in}]")
        flat = x.reshape(-1, sae.d_in).to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)  # [tokens, d_in]
        return sae(flat).to(device=x.device, dtype=x.dtype).reshape(x.shape)
    return reconstruct
