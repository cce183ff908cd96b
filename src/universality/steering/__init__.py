"""Steering group-composition MLPs along their learned representations, against a known ground truth.

A model trained on c = a b represents the answer through irreps; moving the answer from c to c' is the
action of rho(c' c^-1) on each key irrep's block (`IrrepRotation`, at mlp.hook_pre: see its module).
Learned interventions are measured against it, on the model and transferred across seeds.

| name                  | what                                                                      |
|-----------------------|---------------------------------------------------------------------------|
| `steered_model`       | a GroupMLP's states at mlp.hook_pre / hook_post, answers, frozen readout  |
| `steering_requests`   | (pair, c') requests, c' != c                                              |
| `IrrepRotation`       | the ground truth: rho(c' c^-1) on the key irreps' left-embedding blocks   |
| `MeanDifference`      | h + mu_c' - mu_c                                                          |
| `SteeringVector`      | h + mu_c' - mu (one vector per target)                                    |
| `AffineSteering`      | [h, 1] W_c', least squares onto paired counterfactual states              |
| `NonlinearSteering`   | h + MLP(h, onehot y, onehot y'), by the frozen readout or counterfactuals |
| `steering_measures`   | success_rate, target_probability, control_kl, distance_to_ground_truth    |
| `align_units`, `Transferred` | a method fitted on seed A applied to seed B via one-to-one unit matching |
| `steering_table`      | the rows of steering.parquet                                              |

An intervention is any callable (h [k, units], y [k], y' [k]) -> h' [k, units].
"""

from ._ground_truth import IrrepRotation, key_irreps
from ._learned import AffineSteering, MeanDifference, NonlinearSteering, SteeringVector, class_means
from ._steered import (SteeredModel, counterfactual_pairs, steered_model, steering_measures,
                       steering_requests)
from ._table import COLUMNS, METHODS, steering_table
from ._transfer import Alignment, Transferred, align_units

__all__ = ["SteeredModel", "steered_model", "steering_requests", "counterfactual_pairs", "steering_measures",
           "IrrepRotation", "key_irreps", "MeanDifference", "SteeringVector", "AffineSteering",
           "NonlinearSteering", "class_means", "Alignment", "align_units", "Transferred", "steering_table",
           "COLUMNS", "METHODS"]
