"""One trained group-composition seed, analysed: the per-seed tables of a group experiment.

`analyze_group_seed` runs the model on all pairs once and derives, for each real irrep, its logit
similarity (key or not), the FVE of every element-indexed weight matrix and of the hidden layer's
rho(a), rho(b), rho(ab) terms; the seed's losses (full, restricted, excluded); each hidden unit's
irrep and best coset partition; the order in which irreps emerge over the checkpoints; and for
cyclic groups the Fourier key frequencies of the embeddings.

| table       | one row per                    | columns                                                    |
|-------------|--------------------------------|------------------------------------------------------------|
| `irreps`    | irrep                          | irrep, dim, similarity, key, fve_<matrix>..., hidden_a/b/ab |
| `neurons`   | hidden unit                    | unit, irrep, share, dead, coset_subgroup, coset_of, coset_side, coset_constancy |
| `emergence` | irrep                          | irrep, dim, epoch, order, final_similarity                 |
| `fourier`   | (matrix, frequency), C_n only  | matrix, frequency, norm, fve, key                          |
| `summary`   | (a dict)                       | accuracies, losses (full, restricted, excluded), key irreps, fraction of logits explained |
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..collect import capture
from ..tasks import GroupTask
from ._cosets import coset_constancy, subgroups_of_interest
from ._emergence import irrep_emergence
from ._fourier import fourier_key_frequencies
from ._irreps import fraction_logits_explained, fraction_variance_explained, hidden_fve, logit_similarity
from ._loss import excluded_hidden, model_loss, restricted_hidden
from ._units import unit_irreps

__all__ = ["analyze_group_seed", "element_matrices", "run_on_pairs"]

_MAX_COSET_ORDER = 720  # coset scores of every subgroup of interest stay cheap up to S6


@torch.no_grad()
def run_on_pairs(model: nn.Module, task: GroupTask, unit_set: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits [pairs, order] and the unit set's activations [pairs, units] on every pair, float64."""
    model.eval()
    with capture(model, [unit_set]) as cache:
        logits = model(task.left, task.right)
    return logits.double().numpy(), cache[unit_set].double().numpy()


@torch.no_grad()
def _logits_with(model: nn.Module, task: GroupTask, unit_set: str, hidden: np.ndarray) -> np.ndarray:
    """Logits [pairs, order] with the unit set's output replaced by `hidden` [pairs, units]."""
    replacement = torch.as_tensor(hidden, dtype=torch.float32)
    handle = dict(model.named_modules())[unit_set].register_forward_hook(lambda module, inputs, output: replacement)
    try:
        return model(task.left, task.right).double().numpy()
    finally:
        handle.remove()


def element_matrices(model: nn.Module) -> dict[str, np.ndarray]:
    """The weight matrices whose rows are indexed by group element, float64 [order, width] each:
    the embeddings (left and right for the MLP, the shared token embedding for the transformer) and
    the unembedding."""
    order = model.order
    if hasattr(model, "embed_left"):
        matrices = {"embed_left": model.embed_left, "embed_right": model.embed_right}
    else:
        matrices = {"embed": model.embed.weight[:order]}  # the "=" token's row is not an element
    matrices["unembed"] = model.unembed.weight  # [order, hidden or d_model]
    return {name: m.detach().double().numpy() for name, m in matrices.items()}


def analyze_group_seed(task: GroupTask, model: nn.Module, *, unit_set: str, key_threshold: float,
                       unit_threshold: float, checkpoint_models: dict[int, nn.Module] | None = None
                       ) -> dict[str, pd.DataFrame | dict]:
    """Every per-seed table (module docstring) for `model` trained on the composition `task`."""
    group = task.group
    target, train = task.target.numpy(), task.train.numpy()
    # 1) one pass over all pairs
    logits, hidden = run_on_pairs(model, task, unit_set)
    # 2) per irrep: logit similarity, FVE of the element-indexed matrices and of the hidden layer's terms
    irreps = logit_similarity(group, logits, threshold=key_threshold)
    for name, matrix in element_matrices(model).items():
        irreps[f"fve_{name}"] = fraction_variance_explained(group, matrix).fve.to_numpy()
    terms = hidden_fve(group, hidden)
    for term in ("a", "b", "ab"):
        shares = terms[terms.term == term].set_index("irrep").fve
        irreps[f"hidden_{term}"] = irreps.irrep.map(shares).fillna(0.0).to_numpy()
    key = irreps.irrep[irreps.key].tolist()
    # 3) losses: the full model; restricted to / excluding the key irreps' rho(ab) part, patched into
    #    the forward pass in place of the hidden layer (the transformer's residual stream bypasses it)
    predicted = logits.argmax(axis=1) == target
    summary = {
        "train_acc": float(predicted[train].mean()), "test_acc": float(predicted[~train].mean()),
        "loss": model_loss(logits, target), "train_loss": model_loss(logits, target, train),
        "key_irreps": " ".join(key), "n_key_irreps": len(key),
        "fraction_logits_explained": fraction_logits_explained(irreps),
        "restricted_loss": np.nan, "excluded_loss": np.nan,
    }
    if key:
        restricted = _logits_with(model, task, unit_set, restricted_hidden(group, hidden, key))
        excluded = _logits_with(model, task, unit_set, excluded_hidden(group, hidden, key))
        summary["restricted_loss"] = model_loss(restricted, target)
        summary["excluded_loss"] = model_loss(excluded, target, train)
    # 4) per unit: irrep and the subgroup coset partition that explains most of its variance
    neurons = unit_irreps(group, hidden, threshold=unit_threshold)
    if group.order <= _MAX_COSET_ORDER:
        neurons = neurons.join(_best_cosets(group, hidden), on="unit")
    # 5) emergence over checkpoints; 6) Fourier frequencies for cyclic groups
    emergence = irrep_emergence(group, [(epoch, run_on_pairs(m, task, unit_set)[0])
                                        for epoch, m in sorted((checkpoint_models or {}).items())],
                                threshold=key_threshold) if checkpoint_models else pd.DataFrame()
    fourier = pd.DataFrame()
    if group.name.startswith("C") and group.name[1:].isdigit():
        fourier = pd.concat([fourier_key_frequencies(m, group.order).assign(matrix=name)
                             for name, m in element_matrices(model).items()], ignore_index=True)
    return {"irreps": irreps, "neurons": neurons, "emergence": emergence, "fourier": fourier,
            "summary": summary}


def _best_cosets(group, hidden: np.ndarray) -> pd.DataFrame:
    """Per unit: the (subgroup, of, side) coset partition with the highest constancy, [units] rows."""
    frames = [coset_constancy(group, hidden, members).assign(coset_subgroup=name)
              for name, members in subgroups_of_interest(group).items()]
    if not frames:
        return pd.DataFrame(columns=["coset_subgroup", "coset_of", "coset_side", "coset_constancy"])
    scores = pd.concat(frames, ignore_index=True).dropna(subset=["constancy"])
    best = scores.loc[scores.groupby("unit").constancy.idxmax()].set_index("unit")
    return best.rename(columns={"of": "coset_of", "side": "coset_side", "constancy": "coset_constancy"})[
        ["coset_subgroup", "coset_of", "coset_side", "coset_constancy"]]
