"""Seeds as samples of one posterior: pairwise KL of the models' predictive distributions, clusters
of seeds by it with their weights, the mixture's log-loss and regret, and units universal within a
cluster against those universal across all seeds.

| function / class        | input -> output                                                   | module        |
|-------------------------|-------------------------------------------------------------------|---------------|
| `PredictiveSums`        | batches of log_probs [K, positions, classes], targets -> sums      | `_divergence` |
| `divergences`           | sums -> KL [K, K], symmetric KL, log-losses, mixture, regret       | `_divergence` |
| `seed_clusters`         | symmetric KL [K, K], threshold -> cluster and weight per model     | `_clusters`   |
| `cluster_universality`  | a Comparison's pairs table, clusters -> counts and Jaccard         | `_clusters`   |

Its own folder, not `compare/`: it reads model outputs, not unit activations, and consumes the compare
step's tables as plain frames (after `compare` in the data flow).
"""

from ._clusters import LINKAGES, cluster_universality, seed_clusters
from ._divergence import Divergences, PredictiveSums, divergences

__all__ = ["PredictiveSums", "Divergences", "divergences", "seed_clusters", "cluster_universality", "LINKAGES"]
