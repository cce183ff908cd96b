"""When each irrep emerges during training, read off the logits of saved checkpoints.

| function          | input                                  | returns: DataFrame columns                |
|-------------------|----------------------------------------|-------------------------------------------|
| `irrep_emergence` | [(epoch, logits [pairs, n]), ...]      | irrep, dim, epoch, order, final_similarity |
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..errors import UniversalityError
from ..groups import Group
from ._irreps import KEY_THRESHOLD, logit_similarity

__all__ = ["irrep_emergence"]


def irrep_emergence(group: Group, checkpoints, threshold: float = KEY_THRESHOLD) -> pd.DataFrame:
    """The epoch at which each irrep becomes key for good, and the order in which irreps do.

    checkpoints : [(epoch, logits [pairs, n]), ...] or {epoch: logits}, any order
    threshold : the key-irrep cut on `logit_similarity` (the paper's 0.005)
    Returns irrep, dim, epoch, order, final_similarity; sorted by order, irreps that never emerge last.

    An irrep emerges at the first checkpoint from which its logit similarity stays above `threshold`
    through the last one (a single crossing would count noise: random logits of a small group already
    score near 0.005). epoch is NaN and order is <NA> if it is not key at the last checkpoint. order
    ranks emergence epochs, 1 first; irreps emerging at the same checkpoint share a rank.
    The logit similarity is used, rather than an embedding FVE, because it needs only the outputs.

    >>> from universality.groups import make_group, real_irreps
    >>> g = make_group("S3")
    >>> chi = [r.character[g.table[g.table.ravel()][:, g.inverse]] for r in real_irreps(g)]  # chi(a b c^-1)
    >>> table = irrep_emergence(g, [(0, chi[1]), (10, chi[1] + chi[2])])
    >>> table[["irrep", "epoch"]].values.tolist()
    [['(1,1,1)', 0.0], ['(2,1)', 10.0], ['(3)', nan]]
    """
    items = sorted(checkpoints.items() if isinstance(checkpoints, Mapping) else list(checkpoints),
                   key=lambda item: item[0])
    if not items:
        raise UniversalityError("no checkpoints given; pass [(epoch, logits [pairs, order]), ...]")
    epochs = [epoch for epoch, _ in items]
    if len(set(epochs)) != len(epochs):
        raise UniversalityError(f"epochs repeat in {epochs}; give one set of logits per epoch")
    # 1) similarity per checkpoint, [checkpoints, irreps]
    tables = [logit_similarity(group, logits, threshold=threshold) for _, logits in items]
    similarity = np.stack([table.similarity.to_numpy() for table in tables])
    # 2) the last run of key checkpoints reaching the end: its first epoch
    above = similarity > threshold  # [checkpoints, irreps]
    emerged = above[-1]
    misses = np.where(~above, np.arange(len(items))[:, None], -1).max(axis=0)  # last checkpoint below, -1 none
    epoch = np.array([float(epochs[m + 1]) if key else np.nan for m, key in zip(misses, emerged)])
    result = tables[-1][["irrep", "dim"]].copy()
    result["epoch"] = epoch
    result["order"] = pd.Series(epoch).rank(method="dense").astype("Int64")
    result["final_similarity"] = similarity[-1]
    return result.sort_values(["order", "irrep"], na_position="last", kind="stable").reset_index(drop=True)
