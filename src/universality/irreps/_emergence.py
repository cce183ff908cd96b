"""When each irrep emerges during training, read off the logits of saved checkpoints.

| function          | input                                  | returns: DataFrame columns                |
|-------------------|----------------------------------------|-------------------------------------------|
| `irrep_emergence` | [(epoch, logits [pairs, n]), ...]      | irrep, dim, epoch, order, final_similarity |
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd

from .._defaults import EMERGENCE_THRESHOLD
from ..errors import UniversalityError
from ..groups import Group
from ._irreps import KEY_THRESHOLD, logit_similarity

__all__ = ["EMERGENCE_THRESHOLD", "irrep_emergence"]



def irrep_emergence(group: Group, checkpoints, threshold: float = EMERGENCE_THRESHOLD, *,
                    rule: Literal["first_crossing", "stays_above"] = "first_crossing",
                    key_threshold: float = KEY_THRESHOLD) -> pd.DataFrame:
    """The epoch at which each irrep emerges, and the order in which irreps do.

    checkpoints : [(epoch, logits [pairs, n]), ...] or {epoch: logits}, any order
    threshold : the logit similarity (`logit_similarity`) an irrep must exceed to have emerged
    rule : {'first_crossing', 'stays_above'}, default='first_crossing'
        'first_crossing' (the authors' determine_key_rep_order.py, with threshold 0.05): the irreps
        key at the last checkpoint (similarity > `key_threshold`) emerge at the first checkpoint whose
        similarity exceeds `threshold`; a key irrep that never does has epoch NaN and is ordered after
        the rest (the script appends it); other irreps have NaN and <NA>. The script dates at most one
        irrep per checkpoint, so of irreps crossing together all but one move to later rows (on an S4
        MLP of the tests, (2,1,1), crossing with (3,1) at epoch 11, came last); here they share the
        epoch and the rank.
        'stays_above' (this package before issue 8, with threshold 0.005): an irrep emerges at the first
        checkpoint from which its similarity stays above `threshold` through the last one; NaN if it is
        not above at the last. `key_threshold` is not used.
    Returns irrep, dim, epoch, order, final_similarity; sorted by order, irreps with no order last.
    order ranks emergence epochs, 1 first; irreps emerging at the same checkpoint share a rank.
    The logit similarity is used, rather than an embedding FVE, because it needs only the outputs.

    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> chi = [r.character[g.table[g.table.ravel()][:, g.inverse]] for r in real_irreps(g)]  # chi(a b c^-1)
    >>> table = irrep_emergence(g, [(0, chi[1]), (10, chi[1] + chi[2])])
    >>> table[["irrep", "epoch", "order"]].values.tolist()
    [['(1,1,1)', 0.0, 1], ['(2,1)', 10.0, 2], ['(3)', nan, <NA>]]
    """
    if rule not in ("first_crossing", "stays_above"):
        raise UniversalityError(f"rule must be 'first_crossing' (the paper's order script) or 'stays_above', "
                                f"not {rule!r}")
    items = sorted(checkpoints.items() if isinstance(checkpoints, Mapping) else list(checkpoints),
                   key=lambda item: item[0])
    if not items:
        raise UniversalityError("no checkpoints given; pass [(epoch, logits [pairs, order]), ...]")
    epochs = [epoch for epoch, _ in items]
    if len(set(epochs)) != len(epochs):
        raise UniversalityError(f"epochs repeat in {epochs}; give one set of logits per epoch")
    # 1) similarity per checkpoint, [checkpoints, irreps]
    tables = [logit_similarity(group, logits, threshold=key_threshold) for _, logits in items]
    similarity = np.stack([table.similarity.to_numpy() for table in tables])
    above = similarity > threshold  # [checkpoints, irreps]
    if rule == "first_crossing":
        # 2) key irreps at the end, dated by their first checkpoint above the threshold
        key, crossed = similarity[-1] > key_threshold, above.any(axis=0)
        epoch = np.array([float(epochs[first]) if k and c else np.nan
                          for first, k, c in zip(above.argmax(axis=0), key, crossed)])
        order = pd.Series(epoch).rank(method="dense")
        order[key & ~crossed] = order.max() + 1 if order.notna().any() else 1
    else:
        # 2) the last run of checkpoints above the threshold reaching the end: its first epoch
        misses = np.where(~above, np.arange(len(items))[:, None], -1).max(axis=0)  # last checkpoint below, -1 none
        epoch = np.array([float(epochs[m + 1]) if last else np.nan for m, last in zip(misses, above[-1])])
        order = pd.Series(epoch).rank(method="dense")
    result = tables[-1][["irrep", "dim"]].copy()
    result["epoch"] = epoch
    result["order"] = order.astype("Int64")
    result["final_similarity"] = similarity[-1]
    return result.sort_values(["order", "irrep"], na_position="last", kind="stable").reset_index(drop=True)
