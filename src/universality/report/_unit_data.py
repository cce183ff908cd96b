"""Data behind the site's tables and unit pages, as plain lists ready for JSON.

| function          | gives                                                                           |
|-------------------|---------------------------------------------------------------------------------|
| `universal_units` | the universal units in page order (excess corr, largest first) with their ids    |
| `index_table`     | {columns, rows} of the sortable universal-units table; a DataFrame for units.csv |
| `set_table`       | {columns, rows} of every unit of one unit set                                   |
| `unit_shards`     | per shard: unit records (partners, histogram, top contexts) and token contexts  |

A unit record (one per universal unit, `units/shard-XXX.js`):
    {id, model, unit_set, unit, mean_max_corr, mean_baseline, excess_corr, facts: {column: text},
     histogram: [first bin, counts...] | null, top: [[global token, activation], ...] | null,
     partners: [{model, unit_set, unit, max_corr, baseline, excess, claims, id | null, top, facts}]}
and a shard's `contexts` maps each global token index to [tokens (strings), position of the firing token].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..errors import UniversalityError
from ._html import cell_text
from ._plots import universal_mask

__all__ = ["universal_units", "index_table", "set_table", "unit_shards", "UNIT_KEY"]

UNIT_KEY = ["model", "unit_set", "unit"]


def _number(value) -> float | None:
    """A float rounded for the page (4 significant decimals of r), None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if not np.isfinite(value) else round(value, 4)


def universal_units(units: pd.DataFrame) -> pd.DataFrame:
    """Universal live units sorted by excess corr (largest first, stable), `id` = their page number."""
    universal = units[universal_mask(units)].sort_values("excess_corr", ascending=False, kind="stable")
    return universal.reset_index(drop=True).assign(id=lambda frame: np.arange(len(frame)))


def _partners_by_unit(claims: pd.DataFrame) -> dict[tuple, list]:
    """(model, unit_set, unit) -> its pair rows (named tuples), in table order; one pass, no groupby."""
    partners: dict[tuple, list] = {}
    for row in claims.itertuples(index=False):
        partners.setdefault((row.model, row.unit_set, row.unit), []).append(row)
    return partners


def index_table(universal: pd.DataFrame, claims: pd.DataFrame, set_pages: dict[str, str], max_rows: int):
    """The first `max_rows` universal units as {columns, rows}, and every one as a DataFrame for CSV.

    Partners column: per other model, `model: unit_set #unit (r, claims)`; claims = universal units whose
    best match is that same partner (more than 1: near-duplicates).
    """
    partners = _partners_by_unit(claims)
    columns = [("id", "#", "num"), ("model", "model", "text"), ("set", "unit set", "link"), ("unit", "unit", "link"),
               ("maxr", "mean max corr", "num"), ("base", "mean baseline", "num"), ("excess", "excess corr", "num"),
               ("claims", "most claims on a partner", "num"), ("partners", "best partner per other model", "text")]
    rows, csv_rows = [], []
    for unit in universal.itertuples(index=False):
        found = partners.get((unit.model, unit.unit_set, unit.unit), [])
        text = "; ".join(f"{p.other_model}: {p.partner_unit_set} #{p.partner_unit} (r {p.max_corr:.3f}, "
                         f"{p.claims} claim{'s' if p.claims != 1 else ''})" for p in found)
        most = max((int(p.claims) for p in found), default=0)
        values = [unit.id, unit.model, [unit.unit_set, set_pages[unit.unit_set]], [int(unit.unit), f"unit.html#{unit.id}"],
                  _number(unit.mean_max_corr), _number(unit.mean_baseline), _number(unit.excess_corr), most, text]
        if unit.id < max_rows:
            rows.append(values)
        csv_rows.append([unit.id, unit.model, unit.unit_set, int(unit.unit), unit.mean_max_corr, unit.mean_baseline,
                         unit.excess_corr, most, text])
    data = {"columns": [{"key": k, "name": n, "kind": kind} for k, n, kind in columns], "rows": rows}
    csv = pd.DataFrame(csv_rows, columns=["id", "model", "unit_set", "unit", "mean_max_corr", "mean_baseline",
                                          "excess_corr", "most_claims_on_a_partner", "partners"])
    return data, csv


def set_table(units: pd.DataFrame, page_ids: dict[tuple, int]) -> dict:
    """Every unit of one unit set as {columns, rows}; universal units link to their page."""
    columns = [("model", "model", "text"), ("unit", "unit", "link"), ("maxr", "mean max corr", "num"),
               ("base", "mean baseline", "num"), ("excess", "excess corr", "num"), ("state", "state", "text")]
    rows = []
    for unit in units.itertuples(index=False):
        page = page_ids.get((unit.model, unit.unit_set, unit.unit))
        state = "dead" if unit.dead else "universal" if page is not None else "live"
        rows.append([unit.model, [int(unit.unit), None if page is None else f"../unit.html#{page}"],
                     _number(unit.mean_max_corr), _number(unit.mean_baseline), _number(unit.excess_corr), state])
    return {"columns": [{"key": k, "name": n, "kind": kind} for k, n, kind in columns], "rows": rows}


class _Activations:
    """Top activations and histograms of one `TopActivations` as numpy, looked up per unit."""

    def __init__(self, top, contexts: int):
        self.contexts = contexts
        self.values = {(m, s): v.numpy() for m, sets in top.values_.items() for s, v in sets.items()}
        self.tokens = {(m, s): v.numpy() for m, sets in top.token_ids_.items() for s, v in sets.items()}
        self.histograms = {(m, s): v.numpy() for m, sets in top.histogram_.items() for s, v in sets.items()}

    def top(self, model, unit_set, unit) -> list | None:
        key = (str(model), str(unit_set))
        if key not in self.values or not 0 <= unit < self.values[key].shape[1]:
            return None
        tokens, values = self.tokens[key][:, unit], self.values[key][:, unit]
        return [[int(t), _number(v)] for t, v in zip(tokens, values) if t >= 0][:self.contexts]

    def histogram(self, model, unit_set, unit) -> list | None:
        key = (str(model), str(unit_set))
        if key not in self.histograms or not 0 <= unit < self.histograms[key].shape[0]:
            return None
        counts = self.histograms[key][unit]
        filled = np.flatnonzero(counts)
        if not filled.size:
            return None
        return [int(filled[0]), *map(int, counts[filled[0]:filled[-1] + 1])]


def _facts_lookup(unit_facts: pd.DataFrame | None) -> dict[tuple, dict[str, str]]:
    if unit_facts is None or not len(unit_facts):
        return {}
    missing = [c for c in UNIT_KEY if c not in unit_facts]
    if missing:
        raise UniversalityError(f"unit_facts table is missing key columns {missing}; key it by model, unit_set, unit")
    shown = [c for c in unit_facts.columns if c not in UNIT_KEY]
    return {(m, s, int(u)): {c: cell_text(v) for c, v in zip(shown, rest) if not _blank(v)}
            for m, s, u, *rest in unit_facts[UNIT_KEY + shown].itertuples(index=False)}


def _blank(value) -> bool:
    return value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value))


def unit_shards(universal: pd.DataFrame, claims: pd.DataFrame, *, top_activations, token_text: Callable | None,
                unit_facts: pd.DataFrame | None, contexts: int, shard_size: int):
    """Yield (shard number, {"units": [records], "contexts": {token: [tokens, position]}}) in id order."""
    partners = _partners_by_unit(claims)
    page_ids = dict(zip(zip(universal["model"], universal["unit_set"], universal["unit"]), universal["id"]))
    activations = None if top_activations is None else _Activations(top_activations, contexts)
    facts = _facts_lookup(unit_facts)
    resolved: dict[int, list] = {}
    for shard, start in enumerate(range(0, len(universal), shard_size)):
        records, used = [], set()
        for unit in universal.iloc[start:start + shard_size].itertuples(index=False):
            key = (unit.model, unit.unit_set, int(unit.unit))
            record = {"id": int(unit.id), "model": unit.model, "unit_set": unit.unit_set, "unit": int(unit.unit),
                      "mean_max_corr": _number(unit.mean_max_corr), "mean_baseline": _number(unit.mean_baseline),
                      "excess_corr": _number(unit.excess_corr), "facts": facts.get(key, {}),
                      "histogram": activations and activations.histogram(*key),
                      "top": activations and activations.top(*key), "partners": []}
            for p in partners.get(key, []):
                partner = (p.other_model, p.partner_unit_set, int(p.partner_unit))
                record["partners"].append({
                    "model": p.other_model, "unit_set": p.partner_unit_set, "unit": int(p.partner_unit),
                    "max_corr": _number(p.max_corr), "baseline": _number(p.baseline_max_corr),
                    "excess": _number(p.max_corr - p.baseline_max_corr), "claims": int(p.claims),
                    "id": None if partner not in page_ids else int(page_ids[partner]),
                    "top": activations and activations.top(*partner), "facts": facts.get(partner, {})})
            for top in [record["top"], *(p["top"] for p in record["partners"])]:
                used.update(token for token, _ in top or [])
            records.append(record)
        if token_text is not None:
            for token in used - resolved.keys():
                resolved[token] = _context(token_text, token)
        yield shard, {"units": records, "contexts": {str(t): resolved[t] for t in sorted(used) if t in resolved}}


def _context(token_text: Callable, token: int) -> list:
    """token_text(token) checked: ([strings], position of the firing token inside them)."""
    result = token_text(token)
    try:
        strings, position = result
        strings, position = [str(s) for s in strings], int(position)
    except (TypeError, ValueError):
        raise UniversalityError(f"token_text({token}) must return (list of token strings, position), "
                                f"got {type(result).__name__}") from None
    if not 0 <= position < len(strings):
        raise UniversalityError(f"token_text({token}) gave position {position} outside its {len(strings)} tokens")
    return [strings, position]
