import torch

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


def test_sharded_merge_equals_single_pass():
    models = _stream()
    whole = _filled(models, 300)
    halves = [{m: {s: x[i * 1500:(i + 1) * 1500] for s, x in sets.items()} for m, sets in models.items()}
              for i in range(2)]
    first, second = _filled(halves[0], 300), _filled(halves[1], 250)
    merged = first.merge(second)
    _assert_same_state(merged, whole, rtol=1e-6)
    assert first.count_ == 1500 and second.count_ == 1500  # merge returns new state, inputs unchanged


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
