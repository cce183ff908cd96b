"""Neuron families by variance reduction (Gurnee et al. 2024), streamed over batches and mergeable.

For unit a and a binary token feature f, true on n_T of n tokens (n_F = n - n_T):

    VR(a, f) = 1 - (p_F Var(a | not f) + p_T Var(a | f)) / Var(a)      population variances, p = n_f / n
             = n n_T (mean_T - mean)^2 / (n_F SS),    SS = sum over tokens of (a - mean)^2

the second line being the between-group share of SS (eta^2 of the split), exactly. So a feature needs
only its token count and activation sum: per feature *value* (a token id, a position, a label) the
accumulator keeps count [values] and sum [values, units], filled by index_add over the batch's ids;
features that are unions of values (token strings, position buckets) are matrix products of those.
Sums are of a - shift, shift = the first batch's mean per unit: SS = Q - S^2 / n (Q, S the shifted
sums) then loses relative precision only by a factor 1 + (mean - shift)^2 / Var(a), about 1 + 1 / batch
on a stationary stream, where unshifted sums would lose 1 + mean^2 / Var(a).

| feature set (constructor)  | value read per token  | features (binary)                                       |
|----------------------------|-----------------------|---------------------------------------------------------|
| `unigram(vocab)`           | token id              | token == v, for every v                                 |
| `previous_token(vocab)`    | previous token id     | previous token == v                                     |
| `position_buckets(edges)`  | position              | edges[i] <= position < edges[i + 1] (last: unbounded)   |
| `token_strings(vocab)`     | token id              | starts_with_space, capitalised, digit, punctuation,     |
|                            |                       | single_letter                                           |
| `alphabet(vocab)`          | token id              | a ... z: the token's first letter after the space marker |
| `label_features(label)`    | labels[label]         | label == c, for every category c                        |

Negative values mean "none" (no previous token at position 0, an unlabelled token): such a token is
in "not f" for every feature of the set. Feature sets reading the same value share one accumulator.
A feature true (or false) on fewer than `min_count` tokens is skipped: its VR is NaN.

Memory: float64 [values, units] per value read, e.g. 1.2 GB for unigram features of GPT-2 (50,257 x
3,072); `table` builds one feature set's VR matrix of that size at a time.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from .._defaults import is_dead
from .._inputs import as_activations
from ..errors import UniversalityError

__all__ = ["FeatureSet", "FamilyAccumulator", "unigram", "previous_token", "position_buckets", "token_strings",
           "alphabet", "label_features", "row_context"]

_SOURCES = ("token", "prev_token", "position", "label")
_SPACE_MARKERS = ("Ġ", " ", "▁")  # byte-level BPE (GPT-2, Pythia), plain text, SentencePiece


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """A family of binary token features, all read from one integer per token.

    name : the family; the table's `vr_<name>` column holds each unit's best VR in it
    source : {'token', 'prev_token', 'position', 'label'}, the integer the features read
    label : key of the `labels` passed to `update`, when source == 'label'
    names : readable name per value (one feature per value) or per feature (with `membership`)
    membership : bool [features, values], feature i = the union of values j with membership[i, j];
        None: one feature per value (value == v)
    edges : position buckets for source 'position', increasing: feature i = edges[i] <= pos < edges[i + 1]
    size : number of values when known (vocabulary size), so state is allocated once and larger ids
        raise; None: state grows to the largest value seen
    """

    name: str
    source: str
    label: str | None = None
    names: tuple | None = None
    membership: torch.Tensor | None = None
    edges: tuple[int, ...] | None = None
    size: int | None = None

    def __post_init__(self):
        if self.source not in _SOURCES:
            raise UniversalityError(f"unknown feature source {self.source!r}; choose one of: {', '.join(_SOURCES)}")
        if (self.source == "label") != (self.label is not None):
            raise UniversalityError(f"feature set {self.name!r}: give label= exactly when source is 'label'")
        if self.edges is not None and (self.source != "position" or list(self.edges) != sorted(set(self.edges))):
            raise UniversalityError(f"feature set {self.name!r}: edges must be strictly increasing, for source "
                                    f"'position'; got {self.edges}")

    @property
    def key(self) -> str:
        """The value this set reads; sets with equal keys share one accumulator."""
        return f"label:{self.label}" if self.source == "label" else self.source

    def features(self, values: int) -> tuple[list, torch.Tensor | None]:
        """(readable feature names, bool membership [features, values] or None for one feature per value)."""
        if self.edges is not None:
            bucket = torch.bucketize(torch.arange(values), torch.tensor(self.edges), right=True) - 1  # [values]
            ends = [*self.edges[1:], None]
            names = [f"[{lo}, {'...' if hi is None else hi})" for lo, hi in zip(self.edges, ends)]
            return names, bucket[None, :] == torch.arange(len(self.edges))[:, None]
        if self.membership is not None:  # values past the vocabulary (a larger size shared by another set): False
            membership = self.membership[:, :values]
            missing = membership.new_zeros(len(membership), values - membership.shape[1])
            return list(self.names), torch.cat([membership, missing], dim=1)
        return [self.names[v] if self.names is not None and v < len(self.names) else v for v in range(values)], None


def unigram(vocab: Sequence[str] | None = None, *, size: int | None = None) -> FeatureSet:
    """Token == v for every token id v; `vocab` (strings in id order) names them, else the ids do.

    From a Hugging Face tokenizer: `tokenizer.convert_ids_to_tokens(range(len(tokenizer)))`.
    """
    return FeatureSet("unigram", "token", names=_names(vocab), size=_size(vocab, size))


def previous_token(vocab: Sequence[str] | None = None, *, size: int | None = None) -> FeatureSet:
    """Previous token == v for every token id v (the paper's previous-token family)."""
    return FeatureSet("prev_token", "prev_token", names=_names(vocab), size=_size(vocab, size))


def position_buckets(edges: Sequence[int]) -> FeatureSet:
    """Position in [edges[i], edges[i + 1]) for each i, the last bucket unbounded: `(0, 1, 8, 64)`."""
    return FeatureSet("position", "position", edges=tuple(int(e) for e in edges))


def token_strings(vocab: Sequence[str], *, previous: bool = False) -> FeatureSet:
    """starts_with_space ('Ġ', ' ' or '▁'), capitalised, digit (all digits), punctuation (no letter,
    digit or space), single_letter, of each token's string after its space marker; `previous` reads
    the previous token instead (set name prev_token_string)."""
    words = [_word(token) for token in vocab]
    tests = {"starts_with_space": lambda t, w: t.startswith(_SPACE_MARKERS),
             "capitalised": lambda t, w: w[:1].isupper(),
             "digit": lambda t, w: w.isdigit(),
             "punctuation": lambda t, w: w != "" and not any(c.isalnum() or c.isspace() for c in w),
             "single_letter": lambda t, w: len(w) == 1 and w.isalpha()}
    membership = torch.tensor([[test(t, w) for t, w in zip(vocab, words)] for test in tests.values()])
    return FeatureSet("prev_token_string" if previous else "token_string", "prev_token" if previous else "token",
                      names=tuple(tests), membership=membership, size=len(vocab))


def alphabet(vocab: Sequence[str], *, previous: bool = False) -> FeatureSet:
    """Letter x, for x in a-z: the token's first character after its space marker, lowercased, is x
    (the paper's alphabet family); `previous` reads the previous token (set name prev_alphabet)."""
    first = [_word(token)[:1].lower() for token in vocab]
    membership = torch.tensor([[f == letter for f in first] for letter in string.ascii_lowercase])
    return FeatureSet("prev_alphabet" if previous else "alphabet", "prev_token" if previous else "token",
                      names=tuple(string.ascii_lowercase), membership=membership, size=len(vocab))


def label_features(label: str, *, names: Sequence[str] | None = None, name: str | None = None) -> FeatureSet:
    """labels[label] == c for every category c >= 0 (ground-truth classes, depth, in-repeat...);
    `names` reads category c as names[c]; the set is called `name`, default the label."""
    return FeatureSet(name or label, "label", label=label, names=_names(names))


def row_context(tokens: torch.Tensor, labels: Mapping[str, torch.Tensor] | None = None) -> dict:
    """Keyword arguments for `FamilyAccumulator.update` from rows of tokens [rows, pos]: token_ids,
    prev_ids (-1 at position 0), positions, labels {name: [rows * pos]}, all flattened row-major, the
    order of `activations.reshape(-1, units)` for activations [rows, pos, units].

    >>> row_context(torch.tensor([[5, 6, 7]]))["prev_ids"].tolist()
    [-1, 5, 6]
    """
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        raise UniversalityError("tokens must be a LongTensor [rows, pos]")
    previous = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)  # [rows, pos]
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return {"token_ids": tokens.reshape(-1), "prev_ids": previous.reshape(-1), "positions": positions.reshape(-1),
            "labels": {k: v.reshape(-1) for k, v in (labels or {}).items()}}


class FamilyAccumulator:
    """Streams per-value activation counts and sums; gives each unit's variance reduction by every feature.

    Parameters
    ----------
    feature_sets : sequence of FeatureSet, distinct names
    units : int
    min_count : int, default=10
        A feature true, or false, on fewer tokens is skipped (VR NaN).
    device : str, default='cpu'

    State (float64 unless said): `count_` (int), `shift_` [units] (the first batch's mean), `sum_`,
    `sumsq_` [units] (sums of a - shift_ and its square), `value_count_[key]` int64 [values] and
    `value_sum_[key]` [values, units] per value read (see `FeatureSet.key`).

    >>> g = torch.Generator().manual_seed(0)
    >>> tokens = torch.randint(0, 5, (40, 8), generator=g)
    >>> acts = (tokens == 3).double().reshape(-1, 1) + 0.1 * torch.randn(320, 1, generator=g, dtype=torch.float64)
    >>> acc = FamilyAccumulator([unigram(), previous_token()], units=1).update(acts, **row_context(tokens))
    >>> acc.table()[["best_feature_set", "best_feature"]].values.tolist()
    [['unigram', 3]]
    """

    def __init__(self, feature_sets: Sequence[FeatureSet], units: int, *, min_count: int = 10, device: str = "cpu"):
        self.feature_sets = list(feature_sets)
        names = [fs.name for fs in self.feature_sets]
        if not names or len(set(names)) < len(names):
            raise UniversalityError(f"feature sets need distinct names, at least one; got {names}")
        if units < 1 or min_count < 1:
            raise UniversalityError(f"units and min_count must be at least 1, got {units} and {min_count}")
        self.units, self.min_count, self.device = units, min_count, device
        sizes: dict[str, list] = {}
        for fs in self.feature_sets:
            sizes.setdefault(fs.key, []).append(fs.size)
        self._sizes = {key: max((s for s in found if s is not None), default=None) for key, found in sizes.items()}
        self.count_ = 0
        self.shift_: torch.Tensor | None = None
        self.sum_ = torch.zeros(units, dtype=torch.float64, device=device)
        self.sumsq_ = torch.zeros(units, dtype=torch.float64, device=device)
        self.value_count_ = {key: torch.zeros(size or 0, dtype=torch.int64, device=device)
                             for key, size in self._sizes.items()}
        self.value_sum_ = {key: torch.zeros(size or 0, units, dtype=torch.float64, device=device)
                           for key, size in self._sizes.items()}

    def update(self, activations: torch.Tensor, token_ids=None, prev_ids=None, positions=None,
               labels: Mapping[str, torch.Tensor] | None = None) -> "FamilyAccumulator":
        """Add one batch in place; returns self.

        activations : [tokens, units] post-activations
        token_ids, prev_ids, positions : int [tokens], each needed only by the feature sets reading it
        labels : {label: int [tokens]}, categories >= 0, negative = unlabelled
        """
        activations = as_activations(activations, "activations", units=self.units)
        tokens = activations.shape[0]
        ids = self._ids({"token": token_ids, "prev_token": prev_ids, "position": positions}, labels or {}, tokens)
        if not tokens:
            return self
        x = activations.to(self.device, torch.float64)
        # 1) shift by the first batch's mean, so sums of squares stay on the scale of the spread
        if self.shift_ is None:
            self.shift_ = x.mean(dim=0)
        d = x - self.shift_  # [tokens, units]
        total = d.sum(dim=0)
        if not torch.isfinite(total).all():
            raise UniversalityError("activations have NaN or inf entries; pass finite values")
        # 2) totals
        self.count_ += tokens
        self.sum_ += total
        self.sumsq_ += (d * d).sum(dim=0)
        # 3) per value read: token counts and activation sums, scattered by id (negative ids: none)
        for key, values in ids.items():
            keep = values >= 0
            values, rows = (values, d) if keep.all() else (values[keep], d[keep])
            self._reserve(key, int(values.max()) + 1 if len(values) else 0)
            self.value_count_[key] += torch.bincount(values, minlength=len(self.value_count_[key]))
            self.value_sum_[key].index_add_(0, values, rows)
        return self

    def merge(self, other: "FamilyAccumulator") -> "FamilyAccumulator":
        """A new accumulator holding both streams; neither input changes."""
        if _spec(other) != _spec(self):
            raise UniversalityError("cannot merge family accumulators with different feature sets, units or min_count")
        if not other.count_ or not self.count_:
            return (self if other.count_ else other).copy()
        merged = self.copy()
        # 1) re-express other's sums about our shift: a - s = (a - s_other) + delta
        delta = other.shift_ - self.shift_  # [units]
        merged.sum_ += other.sum_ + other.count_ * delta
        merged.sumsq_ += other.sumsq_ + 2 * delta * other.sum_ + other.count_ * delta**2
        merged.count_ += other.count_
        # 2) per value, the same shift, after padding both to the larger number of values
        for key, counts in other.value_count_.items():
            merged._reserve(key, len(counts))
            rows = len(counts)
            merged.value_count_[key][:rows] += counts
            merged.value_sum_[key][:rows] += other.value_sum_[key] + counts[:, None].double() * delta
        return merged

    def copy(self) -> "FamilyAccumulator":
        twin = FamilyAccumulator(self.feature_sets, self.units, min_count=self.min_count, device=self.device)
        twin.count_ = self.count_
        twin.shift_ = None if self.shift_ is None else self.shift_.clone()
        twin.sum_, twin.sumsq_ = self.sum_.clone(), self.sumsq_.clone()
        twin.value_count_ = {k: v.clone() for k, v in self.value_count_.items()}
        twin.value_sum_ = {k: v.clone() for k, v in self.value_sum_.items()}
        return twin

    def variance_reductions(self, name: str) -> tuple[list, torch.Tensor]:
        """(feature names, VR float64 [features, units]) for feature set `name`; NaN for skipped
        features (fewer than min_count tokens on either side) and dead units."""
        fs = next((fs for fs in self.feature_sets if fs.name == name), None)
        if fs is None:
            raise UniversalityError(f"no feature set {name!r}; choose one of: "
                                    f"{', '.join(f.name for f in self.feature_sets)}")
        if not self.count_:
            raise UniversalityError("no tokens streamed yet; call update(...) first")
        n = self.count_
        counts, sums = self.value_count_[fs.key].double(), self.value_sum_[fs.key]  # [values], [values, units]
        names, membership = fs.features(len(counts))
        if membership is not None:  # unions of values: [features, values] @ [values, ...]
            weights = membership.to(self.device, torch.float64)
            counts, sums = weights @ counts, weights @ sums
        # 1) SS = Q - S^2 / n about the mean, from the shifted sums; dead units get NaN
        mean = self.sum_ / n  # [units], shifted
        ss = self.sumsq_ - self.sum_ * mean
        dead = is_dead(ss / n, mean + self.shift_)
        # 2) VR = n n_T (mean_T - mean)^2 / (n_F SS)
        n_true = counts[:, None]  # [features, 1]
        n_false = n - n_true
        vr = sums / n_true.clamp_min(1)  # mean_T, shifted; in place below: one [features, units] buffer
        vr.sub_(mean).square_().mul_(n * n_true / n_false.clamp_min(1)).div_(ss)
        # 3) skip rare (or nearly universal) features
        vr[(counts < self.min_count) | (n - counts < self.min_count)] = math.nan
        vr[:, dead] = math.nan
        return names, vr

    def table(self, top: int = 1) -> pd.DataFrame:
        """Each unit's family: `top` rows per unit (rank 1 first) with columns unit, rank,
        best_feature_set, best_feature (readable: token string, bucket, category), variance_reduction,
        and vr_<set> = the unit's best VR in each feature set. No eligible feature: None and NaN."""
        if top < 1:
            raise UniversalityError(f"top must be at least 1, got {top}")
        best_per_set, values, origins = {}, [], []
        for index, fs in enumerate(self.feature_sets):
            names, vr = self.variance_reductions(fs.name)
            filled = torch.nan_to_num(vr, nan=-math.inf)  # [features, units]
            k = min(top, filled.shape[0])
            if not k:
                best_per_set[f"vr_{fs.name}"] = torch.full((self.units,), math.nan, dtype=torch.float64)
                continue
            best, where = filled.topk(k, dim=0)  # [k, units]
            best_per_set[f"vr_{fs.name}"] = torch.where(torch.isinf(best[0]), math.nan, best[0])
            values.append(best)
            origins += [(index, names, where[i]) for i in range(k)]
        if not values:
            raise UniversalityError("no feature has been seen yet; stream tokens before table()")
        ranked, order = torch.cat(values).topk(min(top, sum(len(v) for v in values)), dim=0)  # [top, units]
        rows = []
        for unit in range(self.units):
            for rank in range(ranked.shape[0]):
                score = float(ranked[rank, unit])
                index, names, where = origins[int(order[rank, unit])]
                eligible = math.isfinite(score)
                rows.append({"unit": unit, "rank": rank + 1,
                             "best_feature_set": self.feature_sets[index].name if eligible else None,
                             "best_feature": names[int(where[unit])] if eligible else None,
                             "variance_reduction": score if eligible else math.nan,
                             **{column: float(v[unit]) for column, v in best_per_set.items()}})
        return pd.DataFrame(rows)

    def _ids(self, inputs: dict, labels: Mapping, tokens: int) -> dict[str, torch.Tensor]:
        """{key: int64 [tokens]} for every value the feature sets read, each checked."""
        out = {}
        for fs in self.feature_sets:
            if fs.key in out:
                continue
            value = labels.get(fs.label) if fs.source == "label" else inputs[fs.source]
            argument = f"labels[{fs.label!r}]" if fs.source == "label" else {
                "token": "token_ids", "prev_token": "prev_ids", "position": "positions"}[fs.source]
            if value is None:
                raise UniversalityError(f"feature set {fs.name!r} reads {argument}; pass it as int [tokens]")
            value = torch.as_tensor(value, device=self.device)
            if value.shape != (tokens,) or value.is_floating_point() or value.is_complex():
                raise UniversalityError(f"{argument} is {value.dtype} {list(value.shape)}; expected int [{tokens}], "
                                        "one per activation row")
            out[fs.key] = value.long()
        return out

    def _reserve(self, key: str, values: int) -> None:
        """Room for `values` values of `key`: an error past a declared size, else zero-padding."""
        size, have = self._sizes[key], len(self.value_count_[key])
        if size is not None and values > size:
            sets = [fs.name for fs in self.feature_sets if fs.key == key]
            raise UniversalityError(f"{key} value {values - 1} is out of range for feature sets {sets} "
                                    f"(size {size}); pass the full vocabulary")
        if values > have:
            counts = self.value_count_[key]
            self.value_count_[key] = torch.cat([counts, counts.new_zeros(values - have)])
            self.value_sum_[key] = torch.cat([self.value_sum_[key],
                                              self.value_sum_[key].new_zeros(values - have, self.units)])


def _spec(acc: FamilyAccumulator) -> tuple:
    return [(fs.name, fs.key) for fs in acc.feature_sets], acc.units, acc.min_count


def _names(values: Sequence | None) -> tuple | None:
    return None if values is None else tuple(values)


def _size(vocab: Sequence[str] | None, size: int | None) -> int | None:
    if vocab is not None and size is not None and size != len(vocab):
        raise UniversalityError(f"size {size} differs from the vocabulary's {len(vocab)} strings; pass one of them")
    return len(vocab) if vocab is not None else size


def _word(token: str) -> str:
    """The token's string without its leading space marker."""
    return token[1:] if token.startswith(_SPACE_MARKERS) else token
