"""When a moment state reads its checks of each batch (moments/_checks.py): at once on CPU, or
deferred on the device (the default off CPU; `check_every` runs the same path here, with no GPU)."""

import contextlib

import pytest
import torch

from universality.errors import UniversalityError
from universality.moments import MomentAccumulator, save_moments

LAYOUT = {"a": {"s": 3, "t": 2}, "b": {"s": 4}}


def _batches(count, seed=0, tokens=50):
    g = torch.Generator().manual_seed(seed)
    return [{m: {s: torch.randn(tokens, n, generator=g) + 100 for s, n in sets.items()} for m, sets in LAYOUT.items()}
            for _ in range(count)]


@contextlib.contextmanager
def _counted_host_reads():
    """Counts every way a tensor's value reaches Python (each a device sync off CPU)."""
    counts = {}
    originals = {name: getattr(torch.Tensor, name) for name in ("__bool__", "item", "tolist", "__float__", "__int__")}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return originals[name](self, *args, **kwargs)
        return wrapper
    try:
        for name in originals:
            setattr(torch.Tensor, name, counting(name))
        yield counts
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def test_deferred_checks_read_the_device_once_per_check_every_batches():
    acc = MomentAccumulator(LAYOUT, check_every=4)
    batches = _batches(10)
    with _counted_host_reads() as counts:
        for batch in batches[:3]:
            acc.update(batch)
        assert counts == {}  # no host read for batches 0-2
        acc.update(batches[3])
        assert counts == {"tolist": 1}  # one read after batch 3
        for batch in batches[4:]:
            acc.update(batch)
        acc.end_stream()  # reads batches 8-9
    assert counts == {"tolist": 3}


def test_checks_on_cpu_read_each_batch_once_before_adding_it():
    acc = MomentAccumulator(LAYOUT)
    with _counted_host_reads() as counts:
        for batch in _batches(3):
            acc.update(batch)
    assert counts == {"tolist": 3}


@pytest.mark.parametrize("bad", [0, 5, 9])
def test_a_nan_in_batch_k_is_reported_as_batch_k_by_deferred_checks(bad):
    batches = _batches(10)
    batches[bad]["b"]["s"][7, 2] = float("nan")
    acc = MomentAccumulator(LAYOUT, check_every=4)
    with pytest.raises(UniversalityError) as error:
        for batch in batches:
            acc.update(batch)
        acc.end_stream()
    message = str(error.value)
    assert message.startswith("model 'b', unit set 's' has NaN or inf activations") and f"in batch {bad} of this" in message
    assert acc.batches_ == min(10, (bad // 4 + 1) * 4)  # found at the first read after it
    with pytest.raises(UniversalityError, match=f"batch {bad} of"):  # and the state stays refused
        save_moments(acc, "unused")


def test_deferred_checks_refuse_deviations_float32_cannot_square():
    batches = _batches(3)
    batches[1]["a"]["t"] = batches[1]["a"]["t"] * 1e30
    acc = MomentAccumulator(LAYOUT, check_every=8)
    for batch in batches:
        acc.update(batch)
    with pytest.raises(UniversalityError, match="model 'a', unit set 't' varies .* in batch 1 of this state.*dtype='float64'"):
        acc.end_stream()


def test_cpu_checks_refuse_a_nan_batch_before_adding_it():
    batches = _batches(3)
    batches[1]["a"]["s"][0, 0] = float("inf")
    acc = MomentAccumulator(LAYOUT).update(batches[0])
    before = {block: value.clone() for block, value in acc.blocks_.items()}
    with pytest.raises(UniversalityError, match="model 'a', unit set 's' has NaN or inf activations; pass finite"):
        acc.update(batches[1])
    assert acc.count_ == 50 and all(torch.equal(acc.blocks_[b], v) for b, v in before.items())


def test_deferred_and_immediate_checks_give_the_same_state():
    batches = _batches(7)
    at_once, deferred = MomentAccumulator(LAYOUT), MomentAccumulator(LAYOUT, check_every=3)
    for batch in batches:
        at_once.update(batch)
        deferred.update(batch)
    deferred.end_stream()
    assert all(torch.equal(at_once.blocks_[b], v) for b, v in deferred.blocks_.items())
    assert all(torch.equal(at_once.mean_[m], v) for m, v in deferred.mean_.items())


def test_a_float64_state_still_rescales_each_batch_it_must():
    """check_every does not defer a float64 state's checks: a batch float32 cannot square is rescaled
    before it is added (one host read per batch), as on CPU."""
    batches = _batches(3)
    batches[1]["a"]["t"] = batches[1]["a"]["t"] * 1e30
    at_once, asked = MomentAccumulator(LAYOUT, dtype="float64"), MomentAccumulator(LAYOUT, dtype="float64", check_every=8)
    for batch in batches:
        at_once.update(batch)
        asked.update(batch)
    assert all(torch.equal(at_once.blocks_[b], v) for b, v in asked.end_stream().blocks_.items())
    assert bool(torch.isfinite(asked.gram_["a"]["t"]).all())


@pytest.mark.parametrize("every", [0, -1, 2.0, True, "4"])
def test_check_every_must_be_a_positive_int(every):
    with pytest.raises(UniversalityError, match="check_every must be a positive int or None"):
        MomentAccumulator(LAYOUT, check_every=every)
