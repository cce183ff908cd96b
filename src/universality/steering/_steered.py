"""A group-composition MLP opened at one hidden layer for steering: its states, readout and measures.

Pairs are all (a, b), a-major (pair index = a n + b); everything is float64 torch.

| name                  | shape / type          | meaning                                                       |
|-----------------------|-----------------------|---------------------------------------------------------------|
| `SteeredModel.hidden` | [pairs, units]        | the layer's activations on every pair (clean run)             |
| `SteeredModel.answer` | int64 [pairs]         | c = a b, the answer the model is asked to change              |
| `readout(h)`          | [k, units] -> [k, n]  | the frozen rest of the model: U relu(h) from hook_pre, U h from hook_post |
| `steering_requests`   | (pairs, targets) [k]  | every (pair, c') with c' != the pair's answer, or a seeded sample |
| `counterfactual_pairs`| int64 [k]             | the pair (c' b^-1, b): same right input, answer c'            |
| `steering_measures`   | dict                  | success_rate, target_probability, control_kl, distance_to_ground_truth |

An intervention is any callable `(h [k, units], source int [k], target int [k]) -> h' [k, units]`: it
sees the hidden states, the current answers y and the requested answers y', nothing else.

Measures, over the requests (pair, c'), c' != c:
- success_rate: fraction whose argmax after the intervention is c';
- target_probability: mean softmax probability of c' after it;
- control_kl: the intervention asked for no change, c' = c, on the requests' pairs (an input already
  answering c' must be left alone): mean KL(clean || intervened) of the output distributions, in nats;
- distance_to_ground_truth: mean ||h' - h'_gt||^2 over the requests divided by the layer's total
  variance over all pairs (sum of per-unit variances), h'_gt the ground-truth intervention's states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..collect import capture
from ..errors import UniversalityError, short_repr
from ..groups import Group
from ..models import GroupMLP
from ..tasks import GroupTask

__all__ = ["SteeredModel", "steered_model", "steering_requests", "counterfactual_pairs", "steering_measures",
           "UNIT_SETS", "check_targets", "pair_index"]

UNIT_SETS = ("mlp.hook_pre", "mlp.hook_post")


@dataclass(frozen=True, eq=False)
class SteeredModel:
    """One GroupMLP seen at `unit_set`: clean states on every pair, answers, and the frozen readout.

    module : the GroupMLP (not changed); group, task : the composition task it was trained on
    unit_set : 'mlp.hook_pre' or 'mlp.hook_post'
    hidden : float64 [pairs, units]; answer : int64 [pairs]; unembed : float64 [n, units], U
    """

    module: GroupMLP
    task: GroupTask
    unit_set: str
    hidden: torch.Tensor
    answer: torch.Tensor
    unembed: torch.Tensor

    @property
    def group(self) -> Group:
        return self.task.group

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [k, n] of hidden states h [k, units] at `unit_set`, through the frozen layers after it."""
        post = F.relu(h) if self.unit_set == "mlp.hook_pre" else h  # [k, units]
        return post @ self.unembed.T  # [k, n]

    def total_variance(self) -> float:
        """Sum over units of the variance over all pairs: the scale of `distance_to_ground_truth`."""
        return float(self.hidden.var(dim=0, unbiased=False).sum())


@torch.no_grad()
def steered_model(model: nn.Module, task: GroupTask, unit_set: str = "mlp.hook_pre") -> SteeredModel:
    """Run `model` on every pair of `task` once and keep the states at `unit_set` (module table).

    Only `GroupMLP` is supported: its readout after the hidden layer is U relu(.) exactly.
    """
    if not isinstance(model, GroupMLP):
        raise UniversalityError(f"steering needs a GroupMLP (logits = U relu(T_L[a] + T_R[b])), not "
                                f"{type(model).__name__}; train the group task with arch 'mlp'")
    if unit_set not in UNIT_SETS:
        raise UniversalityError(f"steering unit_set must be one of: {', '.join(UNIT_SETS)}; got {short_repr(unit_set)}")
    if model.order != task.group.order or task.word != "a b":
        raise UniversalityError(f"the model outputs {model.order} elements and the task is {task.word!r} on "
                                f"{task.group.name} ({task.group.order}); steer a model with its composition task")
    model.eval()
    with capture(model, [unit_set]) as cache:
        model(task.left, task.right)
    return SteeredModel(model, task, unit_set, cache[unit_set].double(), task.target.clone(),
                        model.unembed.weight.detach().double())


def check_targets(group: Group, targets) -> torch.Tensor:
    """Int64 [k] element indices in 0..n-1, else a one-line error naming the group."""
    values = torch.as_tensor(targets)
    if values.dtype.is_floating_point or values.dtype == torch.bool or values.dim() != 1:
        raise UniversalityError(f"steering targets must be a 1-d integer tensor of element indices, got "
                                f"{values.dtype} {list(values.shape)}")
    if len(values) and (values.min() < 0 or values.max() >= group.order):
        bad = values[(values < 0) | (values >= group.order)][0].item()
        raise UniversalityError(f"steering target {bad} is not an element of {group.name}; "
                                f"elements are 0..{group.order - 1}")
    return values.long()


def steering_requests(steered: SteeredModel, pairs=None, *, per_pair: int | None = None,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair int64 [k], target int64 [k]): for every pair in `pairs` (bool mask or indices [pairs]; None =
    all), every target c' != its answer, or `per_pair` of them drawn without replacement (seeded)."""
    n = steered.group.order
    index = pair_index(steered, pairs)
    answers = steered.answer[index]  # [p]
    others = torch.arange(n).expand(len(index), n)[torch.arange(n) != answers[:, None]].view(len(index), n - 1)
    if per_pair is not None:
        if not 1 <= per_pair <= n - 1:
            raise UniversalityError(f"per_pair must be in 1..{n - 1} (targets other than the answer), got {per_pair}")
        generator = torch.Generator().manual_seed(seed)
        picks = torch.rand(len(index), n - 1, generator=generator).argsort(dim=1)[:, :per_pair]
        others = others.gather(1, picks)  # [p, per_pair]
    return index.repeat_interleave(others.shape[1]), others.reshape(-1)


def counterfactual_pairs(steered: SteeredModel, pairs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Int64 [k]: the pair (c' b^-1, b) for each (pair (a, b), target c'): the same right input, answer c'."""
    group, n = steered.group, steered.group.order
    table = torch.from_numpy(np.array(group.table, dtype=np.int64))
    inverse = torch.from_numpy(np.array(group.inverse, dtype=np.int64))
    right = pairs % n
    return table[targets, inverse[right]] * n + right


@torch.no_grad()
def steering_measures(steered: SteeredModel, intervention, requests: tuple[torch.Tensor, torch.Tensor],
                      reference: torch.Tensor | None = None) -> dict[str, float]:
    """The module docstring's four measures of `intervention` on `requests` (pair, target) [k];
    `reference` [k, units]: the ground truth's states on the same requests (None: distance NaN)."""
    pairs, targets = requests
    h, source = steered.hidden[pairs], steered.answer[pairs]
    moved = intervention(h, source, targets)  # [k, units]
    log_probs = steered.readout(moved).log_softmax(dim=1)  # [k, n]
    rows = torch.arange(len(pairs))
    # control: the same pairs asked to keep their answer
    kept = pairs.unique()
    clean = steered.readout(steered.hidden[kept]).log_softmax(dim=1)  # [p, n]
    still = steered.readout(intervention(steered.hidden[kept], steered.answer[kept], steered.answer[kept]))
    kl = (clean.exp() * (clean - still.log_softmax(dim=1))).sum(dim=1)  # [p]
    distance = float("nan")
    if reference is not None:
        distance = float(((moved - reference) ** 2).sum(dim=1).mean()) / steered.total_variance()
    return {"success_rate": float((log_probs.argmax(dim=1) == targets).double().mean()),
            "target_probability": float(log_probs[rows, targets].exp().mean()),
            "control_kl": float(kl.clamp_min(0).mean()), "distance_to_ground_truth": distance}


def pair_index(steered: SteeredModel, pairs) -> torch.Tensor:
    """Int64 pair indices from None (all), a bool mask [pairs] or indices."""
    total = steered.group.order ** 2
    if pairs is None:
        return torch.arange(total)
    values = torch.as_tensor(pairs)
    if values.dtype == torch.bool:
        if values.shape != (total,):
            raise UniversalityError(f"a pair mask must be bool [{total}] (a-major pairs), got {list(values.shape)}")
        return values.nonzero().view(-1)
    if values.dim() != 1 or values.dtype.is_floating_point or (len(values) and not
                                                                 (0 <= values.min() and values.max() < total)):
        raise UniversalityError(f"pairs must be a bool mask [{total}] or integer indices in 0..{total - 1}")
    return values.long()
