"""The `[sae]` section (universality.saes): SAEs trained on one unit set of every model of a run,
several seeds and widths each, then compared (directly, after a linear map, and by their latents'
activations through the universality engine)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ._config_checks import Seed, StrictSection

__all__ = ["SaeConfig", "LoadedSae"]


class LoadedSae(StrictSection):
    """An SAE someone else trained (SAELens, sparsify, dictionary_learning or our format: `saes.load`), on
    one model of the run; compared with the trained ones."""

    model: str = Field(min_length=1, max_length=200)  # the run's model it reads, e.g. "seed-0"
    path: str = Field(min_length=1, max_length=4096)


class SaeConfig(StrictSection):
    """SAEs per model: `len(widths) x len(seeds)` of them on `unit_set`; off by default (training costs
    about 10 s per SAE at the demo's size, measured in the README)."""

    enabled: bool = False
    unit_set: str = Field("blocks.1.mlp.hook_post", min_length=1, max_length=200)  # one unit-set name
    widths: list[Annotated[int, Field(ge=1, le=1 << 17)]] = Field([1024], max_length=8)  # latents; [] with load only
    seeds: list[Seed] = Field([0, 1], min_length=1, max_length=16)
    activation: Literal["topk", "relu", "batchtopk"] = "topk"
    k: int = Field(16, ge=1, le=4096)  # active latents per token (topk, batchtopk)
    l1: float = Field(3e-3, gt=0, le=100)  # the L1 coefficient (relu)
    rows: int = Field(1024, ge=1, le=1 << 22)  # training rows, a sample of their own (`data_seed`)
    data_seed: Seed = 7_654_321
    steps: int = Field(2000, ge=1, le=10_000_000)
    batch_size: int = Field(1024, ge=1, le=1 << 16)  # tokens per step
    lr: float = Field(1e-3, gt=0, le=10)
    buffer_tokens: int = Field(1 << 16, ge=1, le=1 << 26)  # the shuffle buffer
    # a latent silent this long is dead and trained by AuxK (topk, batchtopk): Gao et al.'s 10M tokens is
    # more than a short run trains on (the demo example: 819k), where no latent would ever count as dead
    dead_after_tokens: int = Field(100_000, ge=1, le=1 << 40)
    threshold: float = Field(0.7, gt=0, le=1)  # cosine at or above which matched latents count as shared
    # the first rows of the run's evaluation sample that the SAEs are measured and compared on (latent
    # correlations, FVU, the loss with each SAE spliced in)
    eval_rows: int = Field(256, ge=1, le=1 << 22)

    load: list[LoadedSae] = Field([], max_length=64)  # [[sae.load]] tables

    @model_validator(mode="after")
    def _distinct(self) -> "SaeConfig":
        if self.enabled and len(self.widths) * len(self.seeds) + len(self.load) < 2:
            raise ValueError("compare at least 2 SAEs: give widths and seeds to train, or [[sae.load]] tables")
        if len(set(self.widths)) != len(self.widths) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"widths and seeds must be distinct, got widths {self.widths}, seeds {self.seeds}")
        if self.activation != "relu" and self.widths and self.k > min(self.widths):
            raise ValueError(f"k = {self.k} is more than the narrowest width, {min(self.widths)} latents")
        return self
