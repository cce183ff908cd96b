"""The SAE step of a language run (`[sae]`): SAEs trained on one unit set of every seed, compared at
three levels, with their latents streamed through the universality engine as one more unit set.

1. One pass over a training sample of its own (`sae.rows` rows, `sae.data_seed`): every model's unit
   set, kept in memory for training ([tokens, d_in] per model), and their moments (the cross-moment of
   every model pair gives the orthogonal Procrustes map of the linear level).
2. Per model, width and seed, `saes.train` (or the saved SAE under
   saes/<model>/<unit_set>/<width>-seed<k>/ when it was trained from the same inputs).
3. One pass over the first `sae.eval_rows` rows of the run's evaluation sample: every SAE encodes its
   model's activations; the latents go into one `MomentAccumulator` (each SAE a model whose one unit
   set is "latents"), each SAE's reconstruction into its FVU / L0 / firing counts, each other model's
   SAE's reconstruction (through the Procrustes map and back) into the swap FVU, and the latents into
   families against the language's ground-truth labels (variance reduction, as for neurons).
4. The model's loss with each SAE spliced in, on the same rows; the latents' comparison (rotation
   baseline, calibration); `saes.sae_tables`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._rundir import fingerprint, read_json
from .._sae_config import SaeConfig
from ..collect import stream_activations
from ..compare import compare_moments
from ..errors import UniversalityError
from ..moments import MomentAccumulator
from ..neurons import FamilyAccumulator, intervene, row_context
from ..saes import SAE, load, procrustes_map, save, train
from ..saes._evaluate import ReconstructionStats, splice_hook
from ..saes._tables import LATENT_SET, sae_tables
from ..similarity._blocks import cross_moment
from ._steps import Progress, table_step

__all__ = ["sae_step", "check_sae_unit_set"]

# the `[sae]` settings that define a trained SAE (with its model, width and seed); the others only change
# how SAEs are compared, so changing them never retrains one
_TRAINING = {"unit_set", "activation", "k", "l1", "rows", "data_seed", "steps", "batch_size", "lr", "buffer_tokens",
             "dead_after_tokens"}


def check_sae_inputs(settings: SaeConfig, unit_sets: dict, models: list[str]) -> None:
    """One line, before anything runs, when `[sae] unit_set` is not a unit set of the models ({name: units})
    or an SAE of `[[sae.load]]` cannot be read, names another model or reads another width."""
    if not settings.enabled:
        return
    if settings.unit_set not in unit_sets:
        raise UniversalityError(f"sae.unit_set = {settings.unit_set!r} is not a unit set of these models; "
                                f"choose one of {', '.join(unit_sets)}")
    loaded_saes(settings, models, unit_sets[settings.unit_set])


def loaded_saes(settings: SaeConfig, models: list[str], d_in: int) -> dict[str, tuple[str, SAE]]:
    """{name: (model, SAE)} of `[[sae.load]]`, named <model>/loaded-<i>, each checked against the run."""
    loaded = {}
    for index, entry in enumerate(settings.load):
        if entry.model not in models:
            raise UniversalityError(f"sae.load[{index}].model = {entry.model!r} is not a model of this run; "
                                    f"choose one of {', '.join(models)}")
        sae = load(entry.path)
        if sae.d_in != d_in:
            raise UniversalityError(f"sae.load[{index}] ({entry.path}) reads d_in {sae.d_in}, but "
                                    f"{settings.unit_set} has {d_in} units; load an SAE of that unit set")
        loaded[f"{entry.model}/loaded-{index}"] = (entry.model, sae)
    return loaded


def sae_step(run_dir: Path, settings: SaeConfig, *, adapters: dict, language, eval_tokens: torch.Tensor,
             eval_labels: dict, feature_sets: list, drop: list[int], batch_rows: int, compare, calibration,
             models_print: str, on_progress: Progress) -> tuple[dict[str, pd.DataFrame] | None, list[str]]:
    """The SAE tables (`saes._tables`: saes, sae_latents, sae_pairs; and sae_features, each latent's
    universality and best feature of `feature_sets`), or None when `[sae]` is off. `eval_labels`:
    {label: int [rows, pos]} of `eval_tokens`, what the label features read."""
    if not settings.enabled:
        return None, []
    d_in = adapters[next(iter(adapters))].unit_sets[settings.unit_set]
    loaded = loaded_saes(settings, list(adapters), d_in)
    step_print = fingerprint(models=models_print, sae=settings.model_dump(), compare=compare.model_dump(),
                             calibration=calibration.model_dump(), drop=drop,
                             loaded={name: _digest(sae) for name, (_, sae) in loaded.items()})

    def compute() -> dict[str, pd.DataFrame]:
        sample = language.sample(settings.rows, seed=settings.data_seed).tokens
        chunks, inputs = _training_pass(adapters, sample, settings.unit_set, drop, batch_rows)
        saes, about = _train_all(run_dir, settings, chunks, models_print, on_progress)
        for name, (model, sae) in loaded.items():
            saes[name] = sae
            about.loc[len(about)] = {"sae": name, "model": model, "unit_set": settings.unit_set, "width": sae.latents,
                                     "seed": -1, "train_seconds": np.nan}
        del chunks
        rows = eval_tokens[:settings.eval_rows]
        context = row_context(rows, {name: values[:settings.eval_rows] for name, values in eval_labels.items()})
        cross = {(a, b): _cross(inputs, a, b, settings.unit_set) for a in adapters for b in adapters if a != b}
        latents, measured, frequency, swap, families = _evaluation_pass(
            adapters, saes, about, rows, context, feature_sets, inputs, cross, settings, drop, batch_rows)
        measured = measured.merge(_spliced_losses(adapters, saes, about, rows, settings.unit_set), on="sae")
        latent_comparison = compare_moments(latents, threshold=compare.threshold, rotations=compare.rotations,
                                            seed=compare.seed)
        if calibration.enabled:
            latent_comparison = latent_comparison.calibrate(rotations=calibration.rotations, alpha=calibration.alpha)
        tables = sae_tables(saes, about, measured=measured, frequency=frequency, latent_units=latent_comparison.units,
                            latent_pairs=latent_comparison.pairs, cross_moments=cross, fvu_swap=swap,
                            threshold=settings.threshold, seed=compare.seed)
        tables["sae_features"] = _features_table(latent_comparison.units, families, frequency)
        return tables
    return table_step(run_dir / "tables", "saes", step_print, compute), []


@torch.no_grad()
def _training_pass(adapters: dict, tokens: torch.Tensor, unit_set: str, drop: list[int], batch_rows: int
                   ) -> tuple[dict[str, list[torch.Tensor]], MomentAccumulator]:
    """({model: [tokens, d_in] chunks}, the moments of every model's unit set) over `tokens`."""
    chunks = {m: [] for m in adapters}
    inputs = None
    for batch in stream_activations(adapters, tokens, unit_sets=[unit_set], batch_rows=batch_rows, drop_tokens=drop):
        if inputs is None:
            inputs = MomentAccumulator.for_batch(batch, dtype="float64")
        inputs.update(batch)
        for model, sets in batch.items():
            chunks[model].append(sets[unit_set])
    inputs.end_stream()
    return chunks, inputs


def _digest(sae: SAE) -> str:
    """sha256 of an SAE's weights: a loaded file changed in place changes the step's fingerprint."""
    digest = hashlib.sha256()
    for tensor in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _cross(inputs: MomentAccumulator, a: str, b: str, unit_set: str) -> torch.Tensor:
    """The centred cross-moment [d_a, d_b] of a's and b's unit set, a's as rows (the state holds one order)."""
    models = list(inputs.layout)
    if models.index(a) < models.index(b):
        return cross_moment(inputs, (a, unit_set), (b, unit_set)).double()
    return cross_moment(inputs, (b, unit_set), (a, unit_set)).double().T


def _train_all(run_dir: Path, settings: SaeConfig, chunks: dict, models_print: str, on_progress: Progress
               ) -> tuple[dict[str, SAE], pd.DataFrame]:
    """Every (model, width, seed) SAE, trained or loaded when saved from the same inputs; and one row each
    (sae, model, unit_set, width, seed, train_seconds)."""
    saes, rows = {}, []
    jobs = list(itertools.product(chunks, settings.widths, settings.seeds))
    for done, (model, width, seed) in enumerate(jobs):
        name = f"{model}/{width}-seed{seed}"
        directory = run_dir / "saes" / model / settings.unit_set / f"{width}-seed{seed}"
        print_ = fingerprint(model=models_print, name=name, sae=settings.model_dump(include=_TRAINING))
        on_progress(f"train SAEs ({len(jobs)})", done, len(jobs))
        saved = read_json(directory / "sae.json")
        if saved and saved.get("metadata", {}).get("fingerprint") == print_:
            sae = load(directory)
        else:
            d_in = chunks[model][0].shape[1]
            rule = {"l1": settings.l1} if settings.activation == "relu" else {"k": settings.k}
            sae = train(itertools.chain.from_iterable(itertools.repeat(chunks[model])), d_in=d_in, latents=width,
                        activation=settings.activation, seed=_init_seed(model, width, seed), lr=settings.lr,
                        steps=settings.steps,
                        batch_size=settings.batch_size, buffer_tokens=settings.buffer_tokens,
                        dead_after_tokens=settings.dead_after_tokens, **rule)
            sae.metadata |= {"name": name, "fingerprint": print_, "model": model, "unit_set": settings.unit_set}
            save(sae, directory)
        saes[name] = sae
        rows.append({"sae": name, "model": model, "unit_set": settings.unit_set, "width": width, "seed": seed,
                     "train_seconds": sae.metadata.get("metrics", {}).get("seconds", np.nan)})
    on_progress(f"train SAEs ({len(jobs)})", len(jobs), len(jobs))
    return saes, pd.DataFrame(rows, columns=["sae", "model", "unit_set", "width", "seed", "train_seconds"])


def _init_seed(model: str, width: int, seed: int) -> int:
    """The trainer's seed of one SAE, distinct per (model, width, seed): with `seed` alone, SAEs of one seed on
    different models, or of different widths (whose first rows the same generator draws alike), would start
    from the same dictionary, and an undertrained pair would read as shared features (seen: MCS 0.95)."""
    return int.from_bytes(hashlib.sha256(f"{model}/{width}/{seed}".encode()).digest()[:4], "little")


@torch.no_grad()
def _evaluation_pass(adapters, saes: dict[str, SAE], about: pd.DataFrame, tokens: torch.Tensor, context: dict,
                     feature_sets: list, inputs: MomentAccumulator, cross: dict, settings: SaeConfig,
                     drop: list[int], batch_rows: int):
    """One pass (module docstring, 3.): (latents' MomentAccumulator, per-SAE reconstruction table,
    {sae: firing frequency float64 [latents]}, {(sae_a, sae_b): swap FVU}, {sae: FamilyAccumulator})."""
    by_model = about.groupby("model").sae.apply(list).to_dict()
    mean = {m: inputs.mean_[m] for m in adapters}  # float64 [d_in], one unit set per model
    maps = {pair: procrustes_map(c) for pair, c in cross.items()}  # x_a R ~ x_b, about the means
    stats = {name: ReconstructionStats(sae) for name, sae in saes.items()}
    model_of = dict(zip(about.sae, about.model))
    swaps = {(m, b): ReconstructionStats(saes[b]) for m in adapters for b in saes if model_of[b] != m}
    families = {name: FamilyAccumulator(feature_sets, units=sae.latents) for name, sae in saes.items()}
    latents = None
    for batch, index in stream_activations(adapters, tokens, unit_sets=[settings.unit_set], batch_rows=batch_rows,
                                           drop_tokens=drop, token_index=True):
        encoded = {}
        for model, sets in batch.items():
            x = sets[settings.unit_set]  # [tokens, d_in]
            for name in by_model[model]:
                active = saes[name].encode(x)  # [tokens, latents]
                stats[name].update(x, active, saes[name].decode(active))
                families[name].update(active, **_at(context, index))
                encoded[name] = {LATENT_SET: active}
            centred = x.double() - mean[model]
            for other in adapters:
                if other == model:
                    continue
                mapped = (centred @ maps[model, other] + mean[other]).float()  # a's activations in b's space
                for b in by_model[other]:
                    back = (saes[b](mapped).double() - mean[other]) @ maps[model, other].T + mean[model]
                    swaps[model, b].update(x, None, back.float())
        if latents is None:
            latents = MomentAccumulator.for_batch(encoded, dtype="float32")
        latents.update(encoded)
    latents.end_stream()
    results = {name: s.result() for name, s in stats.items()}
    measured = pd.DataFrame([{"sae": name, "fvu": r["fvu"], "l0": r["l0"], "dead_latents": r["dead_latents"]}
                             for name, r in results.items()])
    frequency = {name: r["firing_frequency"].numpy() for name, r in results.items()}
    swap = {(a, b): swaps[model_of[a], b].result()["fvu"] for a in saes for b in saes if (model_of[a], b) in swaps}
    return latents, measured, frequency, swap, families


def _at(context: dict, index: torch.Tensor) -> dict:
    """`row_context` (flattened over the rows) at the kept tokens' global positions `index` [tokens]."""
    return {key: ({k: v[index] for k, v in value.items()} if key == "labels" else value[index])
            for key, value in context.items()}


def _spliced_losses(adapters: dict, saes: dict[str, SAE], about: pd.DataFrame, tokens: torch.Tensor,
                    unit_set: str) -> pd.DataFrame:
    """Per SAE: the next-token loss of its model on `tokens` (nats) clean and with the SAE spliced in."""
    rows = []
    for name, model in zip(about.sae, about.model):
        effect = intervene(adapters[model], tokens, {unit_set: splice_hook(saes[name])})
        rows.append({"sae": name, "ce_clean": effect["loss_clean"], "ce_spliced": effect["loss"]})
    return pd.DataFrame(rows)


def _features_table(units: pd.DataFrame, families: dict, frequency: dict) -> pd.DataFrame:
    """One row per (SAE, latent): universality of the latent against the other SAEs (the latents'
    comparison), its firing frequency and its best ground-truth feature by variance reduction."""
    frames = []
    for name, acc in families.items():
        table = acc.table()  # one row per latent
        frames.append(table.assign(sae=name, latent=np.arange(len(table)),
                                   frequency=frequency[name]))
    features = pd.concat(frames, ignore_index=True)
    named = features.best_feature.notna()  # token ids, buckets and label codes: one text column
    features["best_feature"] = features.best_feature.where(~named, features.best_feature[named].astype(str))
    keep = [c for c in ("excess_corr", "universal", "calibrated_universal", "q_value") if c in units]
    universality = units.rename(columns={"model": "sae", "unit": "latent"})[["sae", "latent", *keep]]
    return features.merge(universality, on=["sae", "latent"], how="left")
