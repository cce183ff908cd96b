"""Representation similarity of unit sets across (and within) models, from one streamed pass.

| function                  | input                                  | module            |
|---------------------------|----------------------------------------|-------------------|
| `compare_representations` | activation batches -> table with nulls | `_compare`        |
| `linear_cka`, `cca`, `svcca`, `pwcca`, `procrustes`, `regression_r2` | G_a, G_b, C, tokens | `_state_metrics` |
| `debiased_cka`, `mutual_knn` | token rows x [rows, n_a], y [rows, n_b] | `_token_metrics` |
| `Reservoir`               | a seeded, mergeable sample of token rows | `_reservoir`    |
| `principal_angles`        | G_a, G_b, C, tokens -> cosines between top principal subspaces | `_subspaces` |

Data flow: batches -> `MomentAccumulator` (Grams and every cross block, `_blocks`) + `Reservoir`
-> `_table.similarity_table` -> pandas.DataFrame.
"""

from ._compare import compare_representations
from ._reservoir import Reservoir
from ._state_metrics import cca, linear_cka, procrustes, pwcca, regression_r2, svcca
from ._subspaces import principal_angles
from ._table import METRICS
from ._token_metrics import debiased_cka, mutual_knn

__all__ = ["compare_representations", "Reservoir", "METRICS", "linear_cka", "cca", "svcca", "pwcca", "procrustes",
           "regression_r2", "debiased_cka", "mutual_knn", "principal_angles"]
