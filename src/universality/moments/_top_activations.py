"""Top-activating tokens and activation histograms per unit, kept during the single streaming pass.

State, per model m and unit set s (in layout order), for k = `k` and B = `len(bin_edges) + 1` bins:

| name                 | shape                  | meaning                                                      |
|----------------------|------------------------|--------------------------------------------------------------|
| `values_[m][s]`      | float64 [k, units]     | the k largest activations, largest first (-inf: not filled)  |
| `token_ids_[m][s]`   | int64 [k, units]       | the global token index of each (-1: not filled)              |
| `histogram_[m][s]`   | int64 [units, B]       | exact counts of activations per bin of `bin_edges`           |
| `count_`             | int                    | tokens seen                                                  |

Order and ties: rows are sorted by value (largest first) and, among equal values, by global token
index (smallest first), so the result does not depend on batch order or sharding: the state is
exactly the top k of the union of every batch, and `merge` is the top k of two states' union.

Histogram bins: the range of activations is unknown before the pass, so the bins are fixed in advance
and the same for every unit: a symmetric log-spaced grid, `bins_per_decade` edges per decade on each
side of 0 from `smallest` to `largest` in magnitude (default 1e-4 .. 1e4, 8 per decade: 129 edges).
Bin i holds edges[i-1] < x <= edges[i]; bin 0 (x <= -largest) and bin B-1 (x > largest) are the
under- and overflow; the middle bin (-smallest, smallest] holds 0. Counts are exact on these bins,
and two states with the same edges merge by adding counts (no rebinning, no approximation).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import UniversalityError
from ._batches import Layout

__all__ = ["TopActivations", "log_bin_edges"]

_PREFIX = "top_activations"


def log_bin_edges(smallest: float = 1e-4, largest: float = 1e4, bins_per_decade: int = 8) -> torch.Tensor:
    """Symmetric log-spaced edges, float64 [2 * decades * bins_per_decade + 2], ascending:
    -largest .. -smallest, smallest .. largest.

    >>> log_bin_edges(0.1, 10, 1).tolist()
    [-10.0, -1.0, -0.1, 0.1, 1.0, 10.0]
    """
    if not (0 < smallest < largest) or bins_per_decade < 1:
        raise UniversalityError(f"histogram range needs 0 < smallest < largest and bins_per_decade >= 1, got "
                                f"smallest={smallest}, largest={largest}, bins_per_decade={bins_per_decade}")
    decades = torch.log10(torch.tensor(largest / smallest, dtype=torch.float64))
    steps = int(torch.ceil(decades * bins_per_decade - 1e-9)) + 1
    positive = smallest * torch.logspace(0, float(decades), steps, dtype=torch.float64)
    return torch.cat([-positive.flip(0), positive])


def _top_k(values: torch.Tensor, token_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k rows of each column with the largest value, ties broken by the smaller token id.

    `values` float64 [n, units], `token_ids` int64 [n, units] -> ([k, units], [k, units]).
    Two stable sorts give the lexicographic order (value descending, token id ascending).
    """
    by_id = torch.argsort(token_ids, dim=0, stable=True)  # 1) token id ascending
    values, token_ids = values.gather(0, by_id), token_ids.gather(0, by_id)
    by_value = torch.sort(values, dim=0, descending=True, stable=True).indices[:k]  # 2) value descending
    return values.gather(0, by_value), token_ids.gather(0, by_value)


def _batch_top_k(x: torch.Tensor, token_ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_top_k` of one batch, x float64 [tokens, units], token_ids int64 [tokens] -> [min(k, tokens), units].

    1) torch.topk finds the values; only which of several rows tied at the k-th value it keeps is
    unspecified, so 2) the columns with such a tie (common: ReLU zeros) are redone by `_top_k`.
    """
    k = min(k, x.shape[0])
    values, rows = torch.topk(x, k, dim=0)  # [k, units]
    ids = token_ids[rows]
    boundary = values[-1]
    tied = ((x == boundary).sum(dim=0) > (values == boundary).sum(dim=0)).nonzero().squeeze(1)
    if tied.numel():
        values[:, tied], ids[:, tied] = _top_k(x[:, tied], token_ids[:, None].expand(-1, tied.numel()), k)
    return values, ids


class TopActivations:
    """Streams the k largest activations (with their global token index) and a histogram per unit.

    Parameters
    ----------
    layout : {model: {unit_set: units}}
        The structure of every batch, as for `MomentAccumulator`.
    k : int, default=20
        Top activations kept per unit (memory k x units per unit set).
    bin_edges : float64 Tensor [edges], default=`log_bin_edges()`
        Ascending histogram edges shared by every unit (module docstring).

    >>> import torch
    >>> top = TopActivations({"a": {"units": 2}}, k=2)
    >>> top = top.update({"a": torch.tensor([[1., 5.], [3., 4.], [2., 6.]])}, torch.tensor([10, 11, 12]))
    >>> top.values_["a"]["units"].tolist(), top.token_ids_["a"]["units"].tolist()
    ([[3.0, 6.0], [2.0, 5.0]], [[11, 12], [12, 10]])
    """

    def __init__(self, layout: Layout, *, k: int = 20, bin_edges: torch.Tensor | None = None):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UniversalityError(f"top activations k must be an integer >= 1, got {k!r}")
        edges = log_bin_edges() if bin_edges is None else torch.as_tensor(bin_edges, dtype=torch.float64)
        if edges.ndim != 1 or edges.numel() < 1 or not bool((edges[1:] > edges[:-1]).all()):
            raise UniversalityError("bin_edges must be a 1-D strictly ascending tensor; use log_bin_edges()")
        self.layout = {str(m): {str(s): int(n) for s, n in sets.items()} for m, sets in layout.items()}
        self.k = k
        self.bin_edges = edges
        bins = edges.numel() + 1
        self.count_ = 0
        self.values_ = {m: {s: torch.full((k, n), -torch.inf, dtype=torch.float64) for s, n in sets.items()}
                        for m, sets in self.layout.items()}
        self.token_ids_ = {m: {s: torch.full((k, n), -1, dtype=torch.int64) for s, n in sets.items()}
                           for m, sets in self.layout.items()}
        self.histogram_ = {m: {s: torch.zeros(n, bins, dtype=torch.int64) for s, n in sets.items()}
                           for m, sets in self.layout.items()}

    def _empty_like(self) -> "TopActivations":
        return TopActivations(self.layout, k=self.k, bin_edges=self.bin_edges)

    def update(self, batch, token_ids: torch.Tensor) -> "TopActivations":
        """Add one batch `{model: {unit_set: Tensor[tokens, units]}}` in place; returns self.

        `token_ids`: int64 [tokens], the global index of each batch row (what `token_text` resolves).
        """
        batch, token_ids = self._check_batch(batch, token_ids)
        for m, sets in self.layout.items():
            for s, n in sets.items():
                x = batch[m][s].detach().to("cpu", torch.float64)  # exact for float16/32 activations
                if not bool(torch.isfinite(x).all()):
                    raise UniversalityError(f"{m}/{s} has NaN or inf activations in the batch of tokens "
                                            f"{int(token_ids[0])}..; check the model's outputs")
                candidates, candidate_ids = _batch_top_k(x, token_ids, self.k)
                self.values_[m][s], self.token_ids_[m][s] = _top_k(
                    torch.cat([self.values_[m][s], candidates]), torch.cat([self.token_ids_[m][s], candidate_ids]),
                    self.k)
                # histogram: flat index unit * B + bin, one bincount for the whole unit set
                bins = torch.bucketize(x, self.bin_edges)  # [tokens, units], edges[i-1] < x <= edges[i]
                flat = (bins + torch.arange(n)[None, :] * self.histogram_[m][s].shape[1]).reshape(-1)
                self.histogram_[m][s] += torch.bincount(flat, minlength=self.histogram_[m][s].numel()).view(n, -1)
        self.count_ += int(token_ids.numel())
        return self

    def _check_batch(self, batch, token_ids) -> tuple[dict, torch.Tensor]:
        """The batch as {model: {unit_set: Tensor}} (a bare Tensor is the unit set "units") and the ids."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.ndim != 1 or token_ids.is_floating_point():
            raise UniversalityError("token_ids must be an integer Tensor[tokens] (the global index of each row)")
        if not isinstance(batch, Mapping) or set(map(str, batch)) != set(self.layout):
            got = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise UniversalityError(f"batch models {got} differ from the layout's {list(self.layout)}")
        batch = {str(m): {"units": v} if isinstance(v, torch.Tensor) else v for m, v in batch.items()}
        for m, sets in self.layout.items():
            for s, n in sets.items():
                x = batch[m].get(s) if isinstance(batch[m], Mapping) else None
                if not isinstance(x, torch.Tensor) or tuple(x.shape) != (token_ids.numel(), n):
                    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise UniversalityError(f"{m}/{s}: expected Tensor[{token_ids.numel()}, {n}] "
                                            f"(tokens = len(token_ids), units), got {shape}")
        return batch, token_ids.to("cpu", torch.int64)

    def merge(self, other: "TopActivations") -> "TopActivations":
        """A new state: the top k of both states' union and the sum of their histograms (exact)."""
        if other.layout != self.layout or other.k != self.k or not torch.equal(other.bin_edges, self.bin_edges):
            raise UniversalityError("cannot merge TopActivations with a different layout, k or bin_edges")
        merged = self._empty_like()
        for m, sets in self.layout.items():
            for s in sets:
                merged.values_[m][s], merged.token_ids_[m][s] = _top_k(
                    torch.cat([self.values_[m][s], other.values_[m][s]]),
                    torch.cat([self.token_ids_[m][s], other.token_ids_[m][s]]), self.k)
                merged.histogram_[m][s] = self.histogram_[m][s] + other.histogram_[m][s]
        merged.count_ = self.count_ + other.count_
        return merged

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors, keyed `top_activations.{i}.{j}.{values|token_ids|histogram}` (i: model, j: unit
        set, by layout order) plus `.count` and `.bin_edges`, ready to store beside the moments."""
        state = {f"{_PREFIX}.count": torch.tensor([self.count_], dtype=torch.int64),
                 f"{_PREFIX}.bin_edges": self.bin_edges.clone()}
        for i, (m, sets) in enumerate(self.layout.items()):
            for j, s in enumerate(sets):
                state[f"{_PREFIX}.{i}.{j}.values"] = self.values_[m][s].clone()
                state[f"{_PREFIX}.{i}.{j}.token_ids"] = self.token_ids_[m][s].clone()
                state[f"{_PREFIX}.{i}.{j}.histogram"] = self.histogram_[m][s].clone()
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], layout: Layout) -> "TopActivations":
        """The state written by `state_dict` (other keys in `state` are ignored); k from the tensors."""
        try:
            first = state[f"{_PREFIX}.0.0.values"]
            top = cls(layout, k=int(first.shape[0]), bin_edges=state[f"{_PREFIX}.bin_edges"])
            top.count_ = int(state[f"{_PREFIX}.count"][0])
            for i, (m, sets) in enumerate(top.layout.items()):
                for j, s in enumerate(sets):
                    for name, target in (("values", top.values_), ("token_ids", top.token_ids_),
                                         ("histogram", top.histogram_)):
                        tensor = state[f"{_PREFIX}.{i}.{j}.{name}"]
                        if tensor.shape != target[m][s].shape:
                            raise UniversalityError(f"saved top activations of {m}/{s} have shape "
                                                    f"{tuple(tensor.shape)}, the layout needs {tuple(target[m][s].shape)}")
                        target[m][s] = tensor.to(target[m][s].dtype).clone()
        except KeyError as missing:
            raise UniversalityError(f"saved top activations lack {missing}; recompute them (rerun the stream)") from None
        return top
