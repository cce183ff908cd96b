"""Steering interventions learned from a model's activations: mean differences, affine maps, a nonlinear f.

Each is fitted on the states of a set of pairs (`fit`, typically the train pairs) and then called like
any intervention, `(h [k, units], source y [k], target y' [k]) -> h' [k, units]`:

| class              | h' =                          | fitted from                                               |
|--------------------|-------------------------------|-----------------------------------------------------------|
| `MeanDifference`   | h + mu_y' - mu_y              | mu_c [n, units]: mean state over fit pairs with answer c  |
| `SteeringVector`   | h + mu_y' - mu                | one vector per target: mu = mean over all fit pairs       |
| `AffineSteering`   | [h, 1] W_y'                   | least squares onto paired counterfactual states           |
| `NonlinearSteering`| h + s MLP([(h - mu) / s, onehot y, onehot y']) | gradient steps (objective below)         |

Counterfactual pairing (`AffineSteering`, `NonlinearSteering(objective='counterfactual')`): the steering
example for a fit pair (a, b) with answer c and target c' has as its target state the model's own state on
(c' b^-1, b), the input that keeps b and answers c' (`counterfactual_pairs`); every target c' in 0..n-1,
c' = c included (then the target state is h itself). `NonlinearSteering(objective='logit')` (default) uses
no counterfactual input: it minimises the cross-entropy of y' through the frozen readout plus
`proximity` x ||h' - h||^2 / (total variance), on fit pairs with uniformly drawn targets (y' = y included).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UniversalityError
from ._steered import SteeredModel, pair_index, check_targets, counterfactual_pairs

__all__ = ["MeanDifference", "SteeringVector", "AffineSteering", "NonlinearSteering", "OBJECTIVES",
           "class_means"]

OBJECTIVES = ("logit", "counterfactual")


def class_means(steered: SteeredModel, pairs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu [n, units]: mean state over the pairs with answer c, NaN for an answer absent from `pairs`;
    mu_all [units]: the mean over all of them). `pairs`: bool mask or indices, None = all."""
    index = pair_index(steered, pairs)
    h, answer, n = steered.hidden[index], steered.answer[index], steered.group.order
    sums = torch.zeros(n, h.shape[1], dtype=h.dtype).index_add_(0, answer, h)  # [n, units]
    counts = torch.bincount(answer, minlength=n).to(h.dtype)[:, None]  # [n, 1]
    return sums / counts, h.mean(dim=0)


class MeanDifference:
    """One vector per (c, c') pair: mu_c' - mu_c, the difference of the class means (`class_means`)."""

    def fit(self, steered: SteeredModel, pairs=None) -> "MeanDifference":
        self.means_, _ = class_means(steered, pairs)
        self._group = steered.group
        if torch.isnan(self.means_).any():
            raise UniversalityError("some answers have no fit pair, so their mean state is undefined; fit on more "
                                    "pairs (e.g. all of them)")
        return self

    def __call__(self, h: torch.Tensor, source, target) -> torch.Tensor:
        source, target = check_targets(self._group, source), check_targets(self._group, target)
        return h + self.means_[target] - self.means_[source]


class SteeringVector(MeanDifference):
    """A single vector per target c': mu_c' - mu (the overall mean), added whatever the current answer."""

    def fit(self, steered: SteeredModel, pairs=None) -> "SteeringVector":
        super().fit(steered, pairs)
        self.vectors_ = self.means_ - class_means(steered, pairs)[1]  # [n, units]
        return self

    def __call__(self, h: torch.Tensor, source, target) -> torch.Tensor:
        check_targets(self._group, source)
        return h + self.vectors_[check_targets(self._group, target)]


class AffineSteering:
    """h' = [h, 1] W_c' per target c', W_c' [units + 1, units] by ridge least squares onto the paired
    counterfactual states (module docstring).

    ridge : float >= 0, default=1e-6, added as ridge x mean diagonal of X^T X (keeps rank-deficient fits stable)
    """

    def __init__(self, ridge: float = 1e-6):
        self.ridge = ridge

    def fit(self, steered: SteeredModel, pairs=None) -> "AffineSteering":
        index = pair_index(steered, pairs)
        n = steered.group.order
        x = torch.cat([steered.hidden[index], torch.ones(len(index), 1, dtype=torch.float64)], dim=1)  # [p, u+1]
        gram = x.T @ x
        gram = gram + self.ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
        weights = []
        for target in range(n):
            goal = steered.hidden[counterfactual_pairs(steered, index, torch.full_like(index, target))]  # [p, u]
            weights.append(torch.linalg.solve(gram, x.T @ goal))  # [u+1, u]
        self.weights_ = torch.stack(weights)  # [n, units + 1, units]
        self._group = steered.group
        return self

    def __call__(self, h: torch.Tensor, source, target) -> torch.Tensor:
        check_targets(self._group, source)
        target = check_targets(self._group, target)
        x = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], dim=1)  # [k, u+1]
        out = torch.empty_like(h)
        for c in target.unique().tolist():  # one [u+1, u] map per target: no [k, u+1, u] gather
            rows = target == c
            out[rows] = x[rows] @ self.weights_[c]
        return out


class _Steerer(nn.Module):
    """delta = MLP([(h - mu) / s, onehot y, onehot y']) [k, units], two ReLU layers of `width`."""

    def __init__(self, units: int, order: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(units + 2 * order, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, units))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity intervention
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor, source: torch.Tensor, target: torch.Tensor, order: int) -> torch.Tensor:
        codes = torch.cat([z, F.one_hot(source, order), F.one_hot(target, order)], dim=1).float()  # [k, u + 2n]
        return self.net(codes).double()  # [k, units]


class NonlinearSteering:
    """A learned f(h, y, y') = h + s MLP([(h - mu) / s, onehot y, onehot y']) (module docstring).

    objective : {'logit', 'counterfactual'}, default='logit'
    width : int, default=128, the MLP's hidden width
    steps : int, default=1500, Adam steps on batches of `batch` (pair, target) examples
    lr : float, default=3e-3
    proximity : float, default=0.05, weight of ||h' - h||^2 / total variance in the 'logit' objective
    seed : int, default=0, seeds the initialisation and the batches
    Fitted: mu_ [units], scale_ (s: sqrt of the mean per-unit variance over the fit pairs), net_, losses_.
    """

    def __init__(self, *, objective: str = "logit", width: int = 128, steps: int = 1500, batch: int = 512,
                 lr: float = 3e-3, proximity: float = 0.05, seed: int = 0):
        if objective not in OBJECTIVES:
            raise UniversalityError(f"objective must be one of: {', '.join(OBJECTIVES)}; got {objective!r}")
        self.objective, self.width, self.steps, self.batch = objective, width, steps, batch
        self.lr, self.proximity, self.seed = lr, proximity, seed

    def fit(self, steered: SteeredModel, pairs=None) -> "NonlinearSteering":
        """1. standardise; 2. per step draw fit pairs and uniform targets; 3. the objective; 4. Adam."""
        index = pair_index(steered, pairs)
        n, units = steered.group.order, steered.hidden.shape[1]
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net_ = _Steerer(units, n, self.width)
        # 1) standardise by the fit pairs' mean and one overall scale
        fit = steered.hidden[index]
        self.mu_, self.scale_ = fit.mean(dim=0), float(fit.var(dim=0, unbiased=False).mean().sqrt())
        variance = steered.total_variance()
        optimizer = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        self._group, self.losses_ = steered.group, []
        for _ in range(self.steps):
            # 2) a batch of steering examples
            pairs_k = index[torch.randint(len(index), (self.batch,), generator=generator)]
            target = torch.randint(n, (self.batch,), generator=generator)
            h = steered.hidden[pairs_k]
            moved = self._move(h, steered.answer[pairs_k], target)
            # 3) the objective
            if self.objective == "logit":
                loss = (F.cross_entropy(steered.readout(moved), target)
                        + self.proximity * ((moved - h) ** 2).sum(dim=1).mean() / variance)
            else:
                goal = steered.hidden[counterfactual_pairs(steered, pairs_k, target)]
                loss = ((moved - goal) ** 2).sum(dim=1).mean() / variance
            # 4) step
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.losses_.append(loss.item())
        self.net_.eval()
        return self

    def _move(self, h: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = (h - self.mu_) / self.scale_
        return h + self.scale_ * self.net_(z.float(), source, target, self._group.order)

    def __call__(self, h: torch.Tensor, source, target) -> torch.Tensor:
        source, target = check_targets(self._group, source), check_targets(self._group, target)
        with torch.no_grad():
            return self._move(h, source, target)
