"""Sparse autoencoders as one more unit set: train, load other libraries' formats, and compare.

| name                     | what                                                                        | module      |
|--------------------------|-----------------------------------------------------------------------------|-------------|
| `SAE`                    | weights `W_enc`, `W_dec` [latents, d_in], biases, `encode` / `decode`       | `_sae`      |
| `train`                  | an SAE from a stream of Tensor[tokens, d_in]: TopK + AuxK, BatchTopK, ReLU-L1 | `_train`  |
| `evaluate`               | FVU, MSE, mean L0, dead latents, firing frequency [latents] over a stream   | `_evaluate` |
| `splice_hook`            | [..., d_in] -> [..., d_in] reconstruction, to splice an SAE into a model    | `_evaluate` |
| `load`                   | an SAE from SAELens, sparsify, dictionary_learning or our own files         | `_formats`  |
| `save`                   | an SAE in our format: sae.safetensors + sae.json                            | `_formats`  |
| `match`                  | per latent of a: MCS, best partner, Hungarian partner and cosine, shared    | `_match`    |
| `width_coverage`         | shares of a small and a large dictionary's latents covered by the other     | `_match`    |
| `procrustes_map`         | orthogonal R [d_a, d_b] from the centred cross-moment: x_a R ~ x_b          | `_linear`   |
| `match_linear`           | `match(decoder_a @ R, decoder_b)`: the linear level                         | `_linear`   |
| `random_decoder`         | a random dictionary of unit-norm Gaussian rows, seeded (the null)           | `_null`     |
| `random_mcs_expectation` | analytic expected MCS of a direction against L random ones in R^d           | `_null`     |
| `summarize_match`        | one `sae_pairs` row (PAIR_COLUMNS) from a `match` table and its null        | `_pairs`    |
| `compare_sae_pair`       | `sae_pairs` rows of two SAEs at the direct and linear levels                | `_pairs`    |
| `sae_tables`             | a run's saes / sae_latents / sae_pairs tables (all three levels)            | `_tables`   |

Training reads the stream through a seeded shuffle buffer (`_buffer`); TopK and BatchTopK decode and
back-propagate through the kept latents only (`_sparse`).
"""

from ._evaluate import evaluate, splice_hook
from ._formats import load, save
from ._linear import match_linear, procrustes_map
from ._match import MATCH_COLUMNS, match, width_coverage
from ._null import random_decoder, random_mcs_expectation
from ._pairs import PAIR_COLUMNS, compare_sae_pair, summarize_match
from ._sae import ACTIVATIONS, SAE
from ._train import train

__all__ = ["SAE", "ACTIVATIONS", "train", "evaluate", "splice_hook", "load", "save", "match", "width_coverage",
           "MATCH_COLUMNS", "procrustes_map", "match_linear", "random_decoder", "random_mcs_expectation",
           "summarize_match", "compare_sae_pair", "PAIR_COLUMNS"]
