"""Transfer of a learned intervention from seed A to seed B through the universality matching of their units.

| function / class | in                                                | out                                     |
|------------------|---------------------------------------------------|-----------------------------------------|
| `align_units`    | two `SteeredModel`s at the same unit set          | `Alignment`: partner [units_a], moments |
| `Transferred`    | an intervention fitted on A, an `Alignment`       | an intervention on B's states           |

`align_units` runs `compare.compare_activations` on both models' states over every pair (rows aligned by
pair) and `compare.assign_partners`: the one-to-one (Hungarian) assignment of A's units to B's that
maximises the summed Pearson correlation. `Transferred` carries B's state into A's coordinates unit by
matched unit, z-scored (Pearson matching ignores scale and offset): x_A[i] = mu_A[i] + sd_A[i] (h_B[j] -
mu_B[j]) / sd_B[j] for each assigned pair (i, j), mu_A[i] for an unassigned unit of A; applies A's
intervention; and maps the result back the same way into B's matched units, B's unmatched units unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..compare import assign_partners, compare_activations
from ..errors import UniversalityError
from ._steered import SteeredModel

__all__ = ["Alignment", "align_units", "Transferred"]


@dataclass(frozen=True)
class Alignment:
    """partner : int64 [units_a], B's unit assigned to each unit of A (-1: none); corr : float64 [units_a];
    mean_a, std_a [units_a] and mean_b, std_b [units_b]: the states' moments over all pairs."""

    partner: torch.Tensor
    corr: torch.Tensor
    mean_a: torch.Tensor
    std_a: torch.Tensor
    mean_b: torch.Tensor
    std_b: torch.Tensor


def align_units(a: SteeredModel, b: SteeredModel) -> Alignment:
    """The one-to-one assignment of A's units to B's by correlation over all pairs (module docstring)."""
    if a.unit_set != b.unit_set or a.group is not b.group and a.group.name != b.group.name:
        raise UniversalityError(f"align seeds of one group at one unit set; got {a.group.name} {a.unit_set} and "
                                f"{b.group.name} {b.unit_set}")
    batch = {"a": {a.unit_set: a.hidden}, "b": {b.unit_set: b.hidden}}
    pairs = assign_partners(compare_activations([batch])).pairs
    rows = pairs[(pairs.model == "a") & (pairs.other_model == "b")].sort_values("unit")
    partner = np.full(a.hidden.shape[1], -1, dtype=np.int64)
    corr = np.full(a.hidden.shape[1], np.nan)
    partner[rows.unit.to_numpy()] = rows.assigned_partner.to_numpy()
    corr[rows.unit.to_numpy()] = rows.assigned_corr.to_numpy()
    return Alignment(torch.from_numpy(partner), torch.from_numpy(corr), a.hidden.mean(dim=0),
                     a.hidden.std(dim=0, unbiased=False), b.hidden.mean(dim=0), b.hidden.std(dim=0, unbiased=False))


class Transferred:
    """`intervention` (fitted on seed A) applied to seed B's states through `alignment` (module docstring)."""

    def __init__(self, intervention, alignment: Alignment):
        self.intervention, self.alignment = intervention, alignment
        live = alignment.partner >= 0
        self._rows, self._columns = live.nonzero().view(-1), alignment.partner[live]  # A's units, B's units

    def __call__(self, h: torch.Tensor, source, target) -> torch.Tensor:
        al, rows, columns = self.alignment, self._rows, self._columns
        # B -> A: matched units z-scored across; unmatched units of A at their mean
        x = al.mean_a.expand(len(h), -1).clone()  # [k, units_a]
        z = (h[:, columns] - al.mean_b[columns]) / al.std_b[columns].clamp_min(1e-12)
        x[:, rows] = al.mean_a[rows] + al.std_a[rows] * z
        moved = self.intervention(x, source, target)  # [k, units_a]
        # A -> B, into the matched units only
        out = h.clone()
        z = (moved[:, rows] - al.mean_a[rows]) / al.std_a[rows].clamp_min(1e-12)
        out[:, columns] = al.mean_b[columns] + al.std_b[columns] * z
        return out
