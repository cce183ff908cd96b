"""Seeds as samples of one posterior (the Universality Lens paper, 2025): how far apart the predictive
distributions of K models are, and how well their uniform mixture predicts, in one streamed pass.

Per evaluation position t (a next token, or a group pair) each model k gives log-probabilities
`log p_k(. | t)` over C classes and the data give the true class y_t. Summed over the positions:

| state (`PredictiveSums`) | shape  | sum over positions t of                                   |
|--------------------------|--------|-----------------------------------------------------------|
| `count_`                 | ()     | 1                                                         |
| `cross_`                 | [K, K] | H(p_a, p_b) = -sum_c p_a(c) log p_b(c)  (cross-entropy)    |
| `loss_`                  | [K]    | -log p_k(y_t)                                             |
| `mixture_loss_`          | ()     | -log (1/K sum_k p_k(y_t))                                 |

and from them, in nats per position:
    KL(p_a || p_b) = (cross_[a, b] - cross_[a, a]) / count_      (cross_[a, a] is p_a's entropy)
    symmetric[a, b] = (KL(a || b) + KL(b || a)) / 2
    regret = mixture log-loss - the best seed's log-loss          (<= 0: the mixture beats that seed)
By Jensen the mixture's log-loss is at most the mean of the seeds'; it equals a seed's when all agree.
Sums are float64 and merge by addition, so batches (and shards) can come in any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UniversalityError

__all__ = ["PredictiveSums", "Divergences", "divergences"]


class PredictiveSums:
    """The summed state of the module table for `models` (names, in order); `update` with batches."""

    def __init__(self, models: list[str]):
        if len(models) < 1 or len(set(models)) != len(models):
            raise UniversalityError(f"models must be one or more distinct names, got {models}")
        self.models = list(models)
        k = len(models)
        self.count_ = 0
        self.cross_ = torch.zeros(k, k, dtype=torch.float64)
        self.loss_ = torch.zeros(k, dtype=torch.float64)
        self.mixture_loss_ = 0.0

    def update(self, log_probs: torch.Tensor, targets: torch.Tensor) -> "PredictiveSums":
        """Add one batch: `log_probs` [K, positions, classes] (log-softmax, any float dtype, computed in
        float64), `targets` int [positions] in [0, classes). Returns self."""
        k = len(self.models)
        if log_probs.ndim != 3 or log_probs.shape[0] != k:
            raise UniversalityError(f"log_probs must be [models={k}, positions, classes], got {tuple(log_probs.shape)}")
        if targets.shape != log_probs.shape[1:2]:
            raise UniversalityError(f"targets must be [positions={log_probs.shape[1]}], got {tuple(targets.shape)}")
        log_probs = log_probs.to(torch.float64)
        if not torch.isfinite(log_probs).all():
            raise UniversalityError("log_probs hold NaN or infinite values; pass log_softmax of finite logits")
        targets = targets.to(log_probs.device).long()
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= log_probs.shape[2]):
            raise UniversalityError(f"targets must be class indices in [0, {log_probs.shape[2]}), got "
                                    f"[{int(targets.min())}, {int(targets.max())}]")
        probs = log_probs.exp()  # [K, P, C]
        # -sum_t sum_c p_a log p_b: one GEMM over the flattened (position, class) axis, [K, K]
        self.cross_ -= (probs.flatten(1) @ log_probs.flatten(1).T).cpu()
        true = log_probs.gather(2, targets.expand(k, -1).unsqueeze(2)).squeeze(2)  # log p_k(y_t), [K, P]
        self.loss_ -= true.sum(dim=1).cpu()
        self.mixture_loss_ -= float((torch.logsumexp(true, dim=0) - math.log(k)).sum())
        self.count_ += int(log_probs.shape[1])
        return self

    def merge(self, other: "PredictiveSums") -> "PredictiveSums":
        """A new state holding both (same models, in order)."""
        if other.models != self.models:
            raise UniversalityError(f"cannot merge sums over {other.models} into sums over {self.models}")
        merged = PredictiveSums(self.models)
        merged.count_ = self.count_ + other.count_
        merged.cross_ = self.cross_ + other.cross_
        merged.loss_ = self.loss_ + other.loss_
        merged.mixture_loss_ = self.mixture_loss_ + other.mixture_loss_
        return merged


@dataclass(frozen=True)
class Divergences:
    """What `divergences` derives, in nats per position."""

    models: list[str]
    kl: np.ndarray  # [K, K], kl[a, b] = KL(p_a || p_b), zero diagonal
    symmetric: np.ndarray  # [K, K], (kl + kl.T) / 2
    log_loss: np.ndarray  # [K], each seed's mean -log p_k(y)
    mixture_log_loss: float  # mean -log (1/K sum_k p_k(y))
    regret: float  # mixture_log_loss - log_loss.min()
    positions: int


def divergences(sums: PredictiveSums) -> Divergences:
    """Mean KL per ordered pair, symmetric KL, per-seed and mixture log-loss and the mixture's regret.

    >>> sums = PredictiveSums(["a", "b"]).update(torch.log_softmax(torch.zeros(2, 3, 4), -1), torch.tensor([0, 1, 2]))
    >>> d = divergences(sums); float(d.kl.max()), round(d.mixture_log_loss, 4), d.regret
    (0.0, 1.3863, 0.0)
    """
    if sums.count_ == 0:
        raise UniversalityError("no positions were added; update the sums with at least one batch first")
    n = sums.count_
    cross = sums.cross_.numpy() / n
    kl = np.maximum(cross - np.diag(cross)[:, None], 0.0)  # rounding can leave -1e-16 where p_a == p_b
    np.fill_diagonal(kl, 0.0)
    log_loss = sums.loss_.numpy() / n
    mixture = sums.mixture_loss_ / n
    return Divergences(list(sums.models), kl, (kl + kl.T) / 2, log_loss, mixture, mixture - float(log_loss.min()), n)
