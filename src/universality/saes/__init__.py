"""Sparse autoencoders as one more unit set: train, load other libraries' formats, and compare.

| name          | what                                                                          | module      |
|---------------|-------------------------------------------------------------------------------|-------------|
| `SAE`         | weights `W_enc`, `W_dec` [latents, d_in], biases, `encode` / `decode`         | `_sae`      |
| `train`       | an SAE from a stream of Tensor[tokens, d_in]: TopK + AuxK, BatchTopK, ReLU-L1 | `_train`    |
| `evaluate`    | FVU, MSE, mean L0, dead latents, firing frequency [latents] over a stream     | `_evaluate` |
| `splice_hook` | [..., d_in] -> [..., d_in] reconstruction, to splice an SAE into a model      | `_evaluate` |

Training reads the stream through a seeded shuffle buffer (`_buffer`); TopK and BatchTopK decode and
back-propagate through the kept latents only (`_sparse`).
"""

from ._evaluate import evaluate, splice_hook
from ._sae import ACTIVATIONS, SAE
from ._train import train

__all__ = ["SAE", "ACTIVATIONS", "train", "evaluate", "splice_hook"]
