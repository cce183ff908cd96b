"""Which algorithm do seeds find as the attention rate moves from constant (0) to softmax (1) attention?

Zhong et al. 2023 (arXiv 2306.17844) sweep the attention rate alpha of a one-layer transformer on
modular addition and find pizzas at low alpha, clocks at high alpha and mixtures between. Here on a
small C_n, seed after seed (one thread; see `train._group_training` for why seeds run sequentially):

| function               | returns: DataFrame, one row per                                          |
|------------------------|--------------------------------------------------------------------------|
| `attention_rate_sweep` | (attention_rate, seed): diagnostics, algorithm, accuracy, epochs to grok |
| `algorithm_fractions`  | attention_rate: fraction of generalised seeds per algorithm              |

The defaults (`SWEEP_MODEL`, `SWEEP_TRAIN`) are sized so a C_31 seed trains in about 10-25 s on one
thread (idle core): d_model 64, 4 heads, d_mlp 256, the authors' 80% train split and lr 1e-3 raised to 3e-3, weight
decay 1, Grokfast-EMA, stopping 200 epochs after test accuracy reaches 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from ..config import GroupTrainConfig, GroupTransformerConfig
from ..errors import UniversalityError, short_repr
from ..groups import make_group
from ..tasks import composition_task
from ..train import train_group_seed
from ._circles import diagnose
from ._diagnostics import cyclic_order

__all__ = ["SWEEP_MODEL", "SWEEP_TRAIN", "attention_rate_sweep", "algorithm_fractions"]

SWEEP_MODEL = GroupTransformerConfig(d_model=64, n_heads=4, d_head=16, d_mlp=256)
SWEEP_TRAIN = GroupTrainConfig(epochs=4000, lr=3e-3, weight_decay=1.0, train_fraction=0.8, checkpoints=0,
                               log_every=100, stop_at_test_accuracy=1.0, extra_epochs=200, grokfast=True,
                               threads=1)
COLUMNS = ["attention_rate", "seed", "gradient_symmetricity", "distance_irrelevance", "whole_model_algorithm",
           "key_frequencies", "circle_gradient_symmetricity", "circle_distance_irrelevance", "circle_algorithms",
           "algorithm", "test_accuracy", "epochs_to_grok", "seconds"]


def attention_rate_sweep(n: int, rates: Sequence[float], seeds: Sequence[int], *,
                         model: GroupTransformerConfig = SWEEP_MODEL, train: GroupTrainConfig = SWEEP_TRAIN,
                         split_seed: int = 0,
                         on_row: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Train a `model` transformer on C_n addition for every attention rate and seed; diagnose each.

    n : int, the modulus (C_n); rates : attention rates in [0, 1]; seeds : distinct initialisation seeds
    model : its `attention_rate` is replaced by each rate; train : the training settings
    split_seed : the train/test split, shared by every run (the authors draw one per run)
    on_row : called with each finished row (a dict of `COLUMNS`)
    Returns a DataFrame [len(rates) * len(seeds) rows] with columns attention_rate, seed, the keys of
    `diagnose` (whole model: gradient_symmetricity, distance_irrelevance, whole_model_algorithm; per circle:
    key_frequencies, circle_gradient_symmetricity, circle_distance_irrelevance, circle_algorithms, all
    tuples; the seed's algorithm "clock" | "pizza" | "mixed" from its circles), test_accuracy (final),
    epochs_to_grok (None if never), seconds.

    1. check every setting (group, rates, seeds) before training anything;
    2. per rate, per seed: train (`train_group_seed`), then `diagnose` (whole model and circle by circle).
    """
    # 1) the whole plan first
    group = make_group(f"C{n}") if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else None
    if group is None:
        raise UniversalityError(f"n must be an integer >= 2 (the modulus of C_n), got {short_repr(n)}")
    cyclic_order(group)
    if not rates or not seeds:
        raise UniversalityError("give at least one attention rate and one seed")
    if len(set(seeds)) != len(seeds):
        raise UniversalityError(f"seeds must be distinct, got {short_repr(list(seeds))}")
    settings = model.model_dump(exclude={"arch", "attention_rate"})
    configs = [GroupTransformerConfig(**settings, attention_rate=rate) for rate in rates]  # checks each rate
    task = composition_task(group, train.train_fraction, seed=split_seed)
    # 2) train and diagnose
    rows = []
    for config in configs:
        for seed in seeds:
            trained = train_group_seed(task, config, train, seed)
            row = {"attention_rate": config.attention_rate, "seed": seed, **diagnose(trained.model, group),
                   "test_accuracy": trained.curve[-1]["test_acc"], "epochs_to_grok": trained.epochs_to_grok,
                   "seconds": trained.seconds}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def algorithm_fractions(sweep: pd.DataFrame, *, min_test_accuracy: float = 0.99,
                        column: str = "algorithm") -> pd.DataFrame:
    """Per attention rate: seeds, generalised (test accuracy >= `min_test_accuracy`), and the fraction
    of the generalised seeds that are clock, pizza and mixed (NaN when none generalised): the paper
    classifies only runs that generalised. `column`: the classification counted, "algorithm" (from the
    circles) or "whole_model_algorithm". Returns a DataFrame indexed by attention_rate."""
    missing = {"attention_rate", column, "test_accuracy"} - set(sweep.columns)
    if missing:
        raise UniversalityError(f"sweep lacks columns {sorted(missing)}: pass what attention_rate_sweep returned")
    good = sweep[sweep.test_accuracy >= min_test_accuracy]
    counts = pd.crosstab(good.attention_rate, good[column]).reindex(columns=["clock", "pizza", "mixed"], fill_value=0)
    table = pd.DataFrame({"seeds": sweep.groupby("attention_rate").size()})
    table["generalised"] = counts.sum(axis=1).reindex(table.index).fillna(0).astype(int)
    for name in counts.columns:
        table[name] = counts[name].reindex(table.index) / table.generalised.where(table.generalised > 0)
    return table
