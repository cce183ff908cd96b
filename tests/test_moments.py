import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from universality.moments import MomentAccumulator, load_moments, save_moments


def _stream(seed=0, tokens=3000, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 4, generator=g)
    models = {}
    for k, width in enumerate((7, 5, 6)):
        mix = torch.randn(4, width, generator=g)
        x = latent @ mix + torch.randn(tokens, width, generator=g) + offset + 10 * k
        models[f"m{k}"] = {"first": x[:, :3], "second": x[:, 3:]}
    return models


def _batches(models, size):
    tokens = next(iter(next(iter(models.values())).values())).shape[0]
    for start in range(0, tokens, size):
        yield {m: {s: x[start:start + size] for s, x in sets.items()} for m, sets in models.items()}


def _layout(models):
    return {m: {s: x.shape[1] for s, x in sets.items()} for m, sets in models.items()}


def _filled(models, size, dtype="float64"):
    acc = MomentAccumulator(_layout(models), dtype=dtype)
    for batch in _batches(models, size):
        acc.update(batch)
    return acc


def _assert_same_state(a, b, rtol):
    assert a.count_ == b.count_
    for m in a.models:
        # Means are exact to ~eps32 * std / sqrt(batch) (update centres in float32): compare on that scale.
        spread = (a.variance(m) / a.count_).sqrt().max().item()
        torch.testing.assert_close(a.mean_[m], b.mean_[m], rtol=rtol, atol=rtol * spread)
        scale = a.cross_[m].abs().amax().item() if a.cross_[m].numel() else 0.0
        torch.testing.assert_close(a.cross_[m], b.cross_[m], rtol=rtol, atol=rtol * scale)
        for s in a.layout[m]:
            scale = a.gram_[m][s].abs().max().item()
            torch.testing.assert_close(a.gram_[m][s], b.gram_[m][s], rtol=rtol, atol=rtol * scale)


def test_moments_equal_float64_two_pass_reference():
    models = _stream(offset=1e3)
    acc = _filled(models, 256)
    full = {m: torch.cat([x for x in sets.values()], dim=1).double() for m, sets in models.items()}
    centred = {m: x - x.mean(0) for m, x in full.items()}
    for m in acc.models:
        torch.testing.assert_close(acc.mean_[m], full[m].mean(0), rtol=1e-12, atol=0)
        torch.testing.assert_close(acc.variance(m), (centred[m] ** 2).sum(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(acc.cross("m0", "m2"), centred["m0"].T @ centred["m2"], rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(acc.cross("m2", "m1"), centred["m2"].T @ centred["m1"], rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sharded_merge_equals_single_pass(dtype):
    """1e-6 in either dtype: a stream's own batches add Chan's correction through the float32 GEMM (a
    row of the batch matrix), so a float64 stream and its merged shards differ by ~1e-8, not 1e-12."""
    models = _stream()
    whole = _filled(models, 300, dtype)
    halves = [{m: {s: x[i * 1500:(i + 1) * 1500] for s, x in sets.items()} for m, sets in models.items()}
              for i in range(2)]
    first, second = _filled(halves[0], 300, dtype), _filled(halves[1], 250, dtype)
    merged = first.merge(second)
    _assert_same_state(merged, whole, rtol=1e-6)
    assert merged is first and second.count_ == 1500  # merged into `first` in place; `second` unchanged


def test_float64_merge_is_chan_update_to_1e_12():
    """Per-batch float64 states merged in a balanced tree equal the float64 between-group sum
    C = sum_k C_k + sum_k n_k (mean_k - mean)(mean_k - mean)^T of the same states: merging adds no float32 step."""
    shards = [MomentAccumulator(_layout(_stream()), dtype="float64").update(b) for b in _batches(_stream(offset=1e3), 250)]
    counts = torch.tensor([float(s.count_) for s in shards], dtype=torch.float64)  # [shards]
    means = torch.stack([torch.cat(list(s.mean_.values())) for s in shards])  # [shards, all units]
    mean = (counts[:, None] * means).sum(0) / counts.sum()
    shift = (means - mean) * counts[:, None].sqrt()
    reference = {(r0, r1, c0, c1): sum(s.blocks_[(r0, r1, c0, c1)] for s in shards) + shift[:, r0:r1].T @ shift[:, c0:c1]
                 for r0, r1, c0, c1 in shards[0].blocks_}
    level = shards
    while len(level) > 1:
        level = [level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    merged = level[0]
    assert merged.count_ == 3000
    torch.testing.assert_close(torch.cat(list(merged.mean_.values())), mean, rtol=1e-14, atol=0)
    for block, value in reference.items():
        torch.testing.assert_close(merged.blocks_[block], value, rtol=1e-12, atol=1e-12 * value.abs().max().item())


def test_merge_adds_in_place_without_copying_either_state():
    """The merged blocks are the receiver's own tensors, and nothing as large as a block is allocated
    (the old merge cloned the whole state: many GB at GPT-2 scale)."""
    layout = {m: {"s": 40, "t": 40} for m in ("a", "b", "c")}
    g = torch.Generator().manual_seed(3)

    def filled():
        return MomentAccumulator(layout, dtype="float32").update(
            {m: {s: torch.randn(64, 40, generator=g) + 5 for s in ("s", "t")} for m in layout})
    first, second = filled(), filled()
    storage = {block: value.data_ptr() for block, value in first.blocks_.items()}
    kept = {block: value.clone() for block, value in second.blocks_.items()}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        merged = first.merge(second)
    assert merged is first and {block: value.data_ptr() for block, value in merged.blocks_.items()} == storage
    smallest = min(value.numel() * value.element_size() for value in first.blocks_.values())  # 6400 bytes
    assert max(event.cpu_memory_usage for event in profiler.events()) < smallest  # only [units] vectors
    assert all(torch.equal(second.blocks_[block], value) for block, value in kept.items())


def test_merge_is_independent_of_batch_size_and_order():
    models = _stream()
    # batches are centred in float32 before the float64 accumulators: a few eps32 of relative error
    _assert_same_state(_filled(models, 3000), _filled(models, 97), rtol=1e-5)


def test_float32_accumulators_track_float64():
    models = _stream(offset=1e3)
    single, double = _filled(models, 256, "float32"), _filled(models, 256, "float64")
    single.blocks_ = {block: value.double() for block, value in single.blocks_.items()}
    _assert_same_state(single, double, rtol=1e-5)


def test_save_then_load_returns_the_same_state(tmp_path):
    acc = _filled(_stream(), 500, "float32")
    save_moments(acc, tmp_path / "moments", extra={"note": "x"})
    loaded, manifest = load_moments(tmp_path / "moments")
    assert manifest["note"] == "x" and loaded.batches_ == acc.batches_
    _assert_same_state(loaded, acc, rtol=0)
    # and the loaded state keeps streaming
    loaded.update(next(_batches(_stream(seed=1), 100)))
    assert loaded.count_ == acc.count_ + 100
