"""Float32 accumulators over a long stream: 10^7 tokens keep correlations within 1e-5 of a float64
reference (issue 9, part 3). Before each batch's product went through a fresh buffer, the state's
GEMM with beta = 1 rounded every partial sum at the running total's magnitude: 1.2e-2 off here."""

import numpy as np
import pytest
import torch

from universality.compare import pearson
from universality.moments import MomentAccumulator

TOKENS_PER_BATCH, BATCHES, UNITS = 8192, 1221, 8  # 10,002,432 tokens, batches of the pipelines' size


def test_ten_million_tokens_in_float32_stay_within_1e_5_of_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    mixes = {m: torch.randn(4, UNITS, generator=g) for m in ("a", "b", "c")}
    acc = MomentAccumulator({m: {"s": UNITS} for m in mixes}, dtype="float32")
    sums = {m: np.zeros(UNITS) for m in mixes}
    products = {(a, b): np.zeros((UNITS, UNITS)) for a in mixes for b in mixes}
    for _ in range(BATCHES):
        latent = torch.randn(TOKENS_PER_BATCH, 4, generator=g)
        batch = {m: {"s": latent @ mix + 0.5 * torch.randn(TOKENS_PER_BATCH, UNITS, generator=g) + 1000.0}
                 for m, mix in mixes.items()}  # an offset of 1e3 over a spread of ~2
        acc.update(batch)
        # the reference: exact float64 sums of the same float32 values, about the known offset
        x = {m: batch[m]["s"].double().numpy() - 1000.0 for m in mixes}
        for m in mixes:
            sums[m] += x[m].sum(axis=0)
        for a, b in products:
            products[(a, b)] += x[a].T @ x[b]
    n = acc.count_
    assert n == TOKENS_PER_BATCH * BATCHES >= 10**7

    def covariance(a, b):
        return products[(a, b)] / n - np.outer(sums[a] / n, sums[b] / n)
    for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
        reference = covariance(a, b) / np.sqrt(np.outer(np.diag(covariance(a, a)), np.diag(covariance(b, b))))
        assert np.abs(pearson(acc, a, b).numpy() - reference).max() < 1e-5


@pytest.mark.parametrize("scale", [1.0, 1e30])  # 1e30: batches scaled by powers of two, multiplied back per tile
def test_a_tiled_batch_product_equals_the_whole_one(monkeypatch, scale):
    import universality.moments._accumulator as accumulator
    g = torch.Generator().manual_seed(1)
    batches = [{m: {"s": torch.randn(300, 5, generator=g) * (scale if m == "y" else 1.0),
                    "t": torch.randn(300, 3, generator=g)} for m in "xyz"} for _ in range(4)]
    whole = MomentAccumulator({m: {"s": 5, "t": 3} for m in "xyz"}, dtype="float64")
    monkeypatch.setattr(accumulator, "PRODUCT_TILE", 7)  # one or two columns at a time
    tiled = MomentAccumulator({m: {"s": 5, "t": 3} for m in "xyz"}, dtype="float64")
    for batch in batches:
        tiled.update(batch)
    monkeypatch.undo()
    for batch in batches:
        whole.update(batch)
    spread = torch.cat([whole.variance(m) for m in "xyz"]).sqrt()  # [all units]
    for (r0, r1, c0, c1), value in whole.blocks_.items():  # as correlations: equal up to float32 GEMM rounding
        scale = spread[r0:r1, None] * spread[None, c0:c1]  # (a misplaced tile or power of two is off by O(1))
        torch.testing.assert_close(tiled.blocks_[(r0, r1, c0, c1)] / scale, value / scale, rtol=0, atol=1e-6)
