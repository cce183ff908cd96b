"""Sparse autoencoders as one more unit set: train, load other libraries' formats, and compare.

| name   | what                                                                          | module       |
|--------|-------------------------------------------------------------------------------|--------------|
| `SAE`  | weights `W_enc`, `W_dec` [latents, d_in], biases, `encode` / `decode`         | `_sae`       |
| `load` | an SAE from SAELens, sparsify, dictionary_learning or our own files           | `_formats`   |
| `save` | an SAE in our format: sae.safetensors + sae.json                              | `_formats`   |
"""

from ._formats import load, save
from ._sae import ACTIVATIONS, SAE

__all__ = ["SAE", "ACTIVATIONS", "load", "save"]
