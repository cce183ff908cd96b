"""Sparse autoencoders as one more unit set: train, load other libraries' formats, and compare.

| name  | what                                                                  | module  |
|-------|-----------------------------------------------------------------------|---------|
| `SAE` | weights `W_enc`, `W_dec` [latents, d_in], biases, `encode` / `decode` | `_sae`  |
"""

from ._sae import ACTIVATIONS, SAE

__all__ = ["SAE", "ACTIVATIONS"]
