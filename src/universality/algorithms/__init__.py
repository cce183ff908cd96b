"""Algorithm identity: which algorithm, not only which irreps, a seed learned (Zhong et al. 2023).

A package of its own rather than part of `irreps`: clock and pizza use the same Fourier key frequencies
(irreps), so `irreps` cannot tell them apart; the diagnostics need the model's forward and gradients,
not only its weights and logits, and the sweep trains models (`irreps` never imports `train`).

| function                    | question                                                         |
|-----------------------------|------------------------------------------------------------------|
| `gradient_symmetricity`     | do the two inputs' embeddings enter the logits symmetrically?    |
| `distance_irrelevance`      | does the correct logit ignore the distance (a - b) mod n?         |
| `embedding_key_frequencies` | which circles (Fourier frequencies) does the embedding hold?     |
| `classify_algorithm`        | clock, pizza or mixed? (from the two diagnostics)                |
| `isolate_circle`            | the model computing with one circle (key frequency) alone        |
| `circle_diagnostics`        | the diagnostics and algorithm of each circle alone               |
| `classify_circles`          | the seed's algorithm from its circles': all pizza, all clock, or mixed |
| `diagnose`                  | all of the above for one C_n transformer                         |
| `attention_rate_sweep`      | attention rate x seeds on C_n: the algorithm of every run        |
| `algorithm_fractions`       | per attention rate: the fraction of clocks, pizzas and mixtures  |
"""

from ._circles import circle_diagnostics, classify_circles, diagnose, isolate_circle
from ._diagnostics import (classify_algorithm, correct_logits, cyclic_order, distance_irrelevance,
                           embedding_key_frequencies, gradient_symmetricity)
from ._sweep import algorithm_fractions, attention_rate_sweep

__all__ = ["gradient_symmetricity", "distance_irrelevance", "correct_logits", "embedding_key_frequencies",
           "classify_algorithm", "isolate_circle", "circle_diagnostics", "classify_circles", "diagnose",
           "cyclic_order", "attention_rate_sweep", "algorithm_fractions"]
