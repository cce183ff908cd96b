"""Config validation before anything is written: generated mutations of valid configs of every kind
(wrong types, out-of-range and huge numbers, inf/nan, unknown keys, bad names and devices, deep
nesting, non-UTF-8 and broken files) either validate or raise `UniversalityError` in one line that
names the field; never another exception."""

import math
import tomllib
import warnings

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from universality import UniversalityError
from universality.errors import short_repr
from universality._threads import available_cores, resolve_threads
from universality.config import (ExperimentConfig, GroupExperimentConfig, PretrainedExperimentConfig, TrainConfig,
                                 load_config, parse_config)

LANGUAGE = {
    "name": "tiny", "seeds": [0, 1],
    "language": {"seq_len": 16, "n_classes": 4, "tokens_per_class": 4, "position_period": 8, "repeat_len": 3},
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_mlp": 16},
    "train": {"steps": 4, "batch_size": 4, "threads": 1},
    "collect": {"rows": 16, "batch_rows": 8},
    "compare": {"rotations": 1},
}
GROUPS = {"kind": "groups", "name": "tiny", "seeds": [0, 1], "task": {"group": "C6"},
          "model": {"arch": "mlp", "embed_dim": 8, "hidden": 8}, "train": {"epochs": 5, "threads": 1}}
PRETRAINED = {"kind": "pretrained", "name": "tiny", "models": ["model-a", "model-b"], "data": {"source": "tokens.npy"}}
BASES = {"language": (LANGUAGE, ExperimentConfig), "groups": (GROUPS, GroupExperimentConfig),
         "pretrained": (PRETRAINED, PretrainedExperimentConfig)}


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _paths(config_class, only_numbers: bool = False) -> list[tuple[str, ...]]:
    """Every (field,) and (section, field) of a config class: the places a mutation can hit
    (with `only_numbers`, those whose default is a number)."""
    paths = []
    for name, field in config_class.model_fields.items():
        paths.append((name,))
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            paths += [(name, sub) for sub, f in annotation.model_fields.items()
                      if not only_numbers or type(f.default) in (int, float)]
    return [p for p in paths if len(p) == 2 or not only_numbers]


BAD_NAMES = [".", "..", "", "a/b", "..\\x", ".hidden", "x" * 101, "x" * 300, "[/bold]", "^+$", "tab\t", "ü", "a b"]
BAD_DEVICES = ["gpu", "cuda:7", "cuda:-1", "CPU", "cpu ", "", "meta", "cuda:0", "cuda:99999", "mps:0", "cpu:0"]
SCALARS = [None, "", "x", "[/bold]", "^[A-Za-z0-9_.-]+$", [], [1], {}, {"a": 1}, True, False, -1, 0, 1, 1.5, -0.0,
           "auto", "1", 10**30, 2**63, 2**64, -(2**63), 10**400, -(10**400)]
values = st.one_of(
    st.sampled_from(SCALARS),
    st.integers(min_value=0, max_value=64),  # often valid: the fuzz must not only hit errors
    st.floats(min_value=0, max_value=1),
    st.sampled_from([math.inf, -math.inf, math.nan]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=120),
    st.sampled_from(BAD_NAMES + BAD_DEVICES),
    st.integers(min_value=5, max_value=3000).map(_nested),
    st.lists(st.integers(min_value=-5, max_value=2**40), max_size=70),
)


@st.composite
def mutated_configs(draw) -> tuple[dict, tuple[str, ...]]:
    """(a valid config of some kind with one to three mutations, the path of the first)."""
    kind = draw(st.sampled_from(sorted(BASES)))
    base, config_class = BASES[kind]
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    first = None
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        how = draw(st.sampled_from(["value"] * 8 + ["number"] * 4 + ["unknown", "name", "device", "kind", "section"]))
        if how == "unknown":
            path = (*draw(st.sampled_from([(), *[(s,) for s in data if isinstance(data[s], dict)]])),
                    draw(st.sampled_from(["bogus", "widht", "lr_", "[/bold]", "x" * 150])))
            value = draw(values)
        elif how in ("name", "device", "kind"):
            path = (how,)
            value = draw(st.sampled_from({"name": BAD_NAMES, "device": BAD_DEVICES,
                                          "kind": [["language"], 3, "family", None, "", {"a": 1}, "GROUPS"]}[how]))
        elif how == "number":  # a number field given inf, nan, a huge or a negative number
            path = draw(st.sampled_from(_paths(config_class, only_numbers=True)))
            value = draw(st.sampled_from([math.inf, -math.inf, math.nan, 10**30, -(2**63), -1, 1e300, 0]))
        elif how == "section":
            path = (draw(st.sampled_from([s for s in data if isinstance(data[s], dict)] or ["language"])),)
            value = draw(st.sampled_from([3, "x", [1, 2], True, _nested(50)]))
        else:
            path = draw(st.sampled_from([p for p in _paths(config_class) if p != ("kind",)]))
            value = draw(values)
        target = data
        for part in path[:-1]:
            target = target.setdefault(part, {}) if isinstance(target.get(part, {}), dict) else {}
        target[path[-1]] = value
        first = first or path
    return data, first


def _check_message(message: str, path: tuple[str, ...]) -> None:
    """One line, and it names the field (or its section, or the key it holds)."""
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 700, message
    named = {*path, "kind", "name", "seeds", "model", "language", "train", "collect", "compare", "task", "data",
             "device", "analysis", "claims", "scale", "neurons", "calibration", "similarity", "posterior", "sae",
             "steering"}
    assert any(part and part[:20] in message for part in named), (message, path)


def _leaves(value):
    if isinstance(value, dict):
        yield from (leaf for v in value.values() for leaf in _leaves(v))
    elif isinstance(value, (list, tuple)):
        yield from (leaf for v in value for leaf in _leaves(v))
    else:
        yield value


def _validate(data: dict, path: tuple[str, ...]) -> None:
    try:
        config = parse_config(data, "fuzz.toml")
    except UniversalityError as error:
        _check_message(str(error), path)
        return
    for leaf in _leaves(config.model_dump()):  # what validates is safe to run: finite, bounded, a plain name
        assert not isinstance(leaf, float) or math.isfinite(leaf), leaf
        assert not isinstance(leaf, int) or abs(leaf) < 2**63, leaf
    assert config.name == data.get("name", config.name) and not config.name.startswith(".")


@settings(max_examples=1200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_configs())
def test_generated_configs_validate_or_fail_in_one_line_naming_the_field(case):
    data, path = case
    _validate(data, path)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=mutated_configs(), damage=st.sampled_from(["none", "non_utf8", "truncate", "flip", "deep", "nul"]),
       where=st.floats(min_value=0, max_value=1))
def test_generated_config_files_validate_or_fail_in_one_line(tmp_path, case, damage, where):
    data, _ = case
    try:
        text = tomli_w.dumps(data).encode()
    except (TypeError, ValueError, RecursionError):  # None, or nesting tomli_w cannot write: its repr as a value
        text = f"name = 'tiny'\nvalue = {short_repr(data)!r}\n".encode()
    at = int(where * len(text))
    text = {"none": text, "non_utf8": text[:at] + b"\xff\xfe\xc3" + text[at:], "truncate": text[:at],
            "flip": text[:at] + bytes([text[at] ^ 0x20]) + text[at + 1:] if at < len(text) else text,
            "deep": text + b"\nnested = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nul": text[:at] + b"\x00" + text[at:]}[damage]
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text)
    try:
        load_config(path)
    except UniversalityError as error:
        assert "\n" not in str(error) and len(str(error)) < 700, str(error)


@pytest.mark.parametrize("data, field", [
    ({**LANGUAGE, "name": ".."}, "name"), ({**LANGUAGE, "name": "."}, "name"), ({**LANGUAGE, "name": "x" * 256}, "name"),
    ({**LANGUAGE, "kind": ["language"]}, "kind"), ({**LANGUAGE, "kind": 3}, "kind"),
    ({**LANGUAGE, "seeds": [-1, 0]}, "seeds"), ({**LANGUAGE, "device": "cuda:99"}, "device"),
    ({**LANGUAGE, "device": "gpu"}, "device"), ({**LANGUAGE, "train": {"lr": math.inf}}, "train.lr"),
    ({**LANGUAGE, "train": {"lr": math.nan}}, "train.lr"), ({**LANGUAGE, "train": {"batch_size": 10**9}}, "65536"),
    ({**LANGUAGE, "collect": {"rows": 10**12}}, "collect.rows"), ({**LANGUAGE, "model": {"d_model": 10**6}}, "8192"),
    ({**LANGUAGE, "train": {"steps": 10**30}}, "train.steps"), ({**GROUPS, "name": ".."}, "name"),
    ({**GROUPS, "train": {"lr": math.inf}}, "train.lr"), ({**PRETRAINED, "device": "cuda:3"}, "device"),
    ({**LANGUAGE, "model": {"d_model": 4096, "d_mlp": 16384, "n_layers": 16, "n_heads": 4}}, "24 GiB"),
])
def test_known_bad_values_are_refused_with_the_field_and_the_limit(data, field):
    with pytest.raises(UniversalityError) as error:
        parse_config(data)
    assert field in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", sorted(BASES))
def test_every_float_field_of_every_kind_refuses_inf_and_nan(kind):
    base, config_class = BASES[kind]
    floats = [path for path in _paths(config_class, only_numbers=True)
              if isinstance(config_class.model_fields[path[0]].annotation.model_fields[path[1]].default, float)]
    assert floats  # compare.threshold at least
    for section, field in floats:
        for value in (math.inf, -math.inf, math.nan):
            with pytest.raises(UniversalityError, match=f"{section}.{field}"):
                parse_config({**base, section: {**base.get(section, {}), field: value}})


def test_a_plan_that_fits_24_gib_is_accepted():
    assert parse_config({**LANGUAGE, "model": {"d_model": 512, "d_mlp": 2048, "n_layers": 4, "n_heads": 8}})


def test_a_bad_config_file_is_one_line(tmp_path):
    cases = {"bytes.toml": b'name = "caf\xe9"\n', "big.toml": b"#" * (2 << 20), "deep.toml": b"a = " + b"[" * 5000,
             "syntax.toml": b"name = \n"}
    for name, text in cases.items():
        (tmp_path / name).write_bytes(text)
        with pytest.raises(UniversalityError) as error:
            load_config(tmp_path / name)
        assert name in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UniversalityError, match="not UTF-8"):
        load_config(tmp_path / "bytes.toml")
    with pytest.raises(UniversalityError, match="1,048,576"):
        load_config(tmp_path / "big.toml")


def test_threads_default_to_auto_are_shown_in_the_demo_config_and_resolve_to_available_cores():
    demo = tomllib.loads(__import__("universality.config", fromlist=["x"]).default_config_text())
    assert demo["train"]["threads"] == 1 and TrainConfig().threads == "auto"  # the demo pins 1: reproducible
    assert 1 <= resolve_threads("auto") <= available_cores() and resolve_threads(None) >= 1
    assert resolve_threads(1) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_threads(1000) == available_cores()
    assert len(caught) == 1 and "threads = 1000" in str(caught[0].message)
    with pytest.raises(UniversalityError):
        resolve_threads(0)


def test_auto_threads_leave_busy_cores_alone(monkeypatch):
    import os
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for load, threads in ((0.2, 4), (1.4, 3), (2.6, 1), (8.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert resolve_threads("auto") == threads, load
    with pytest.warns(UserWarning, match="using 4"):
        assert resolve_threads(1000) == 4


def test_threads_do_not_enter_what_the_model_fingerprint_is_made_of():
    one = TrainConfig(threads=1).model_dump(exclude={"threads"})
    assert one == TrainConfig(threads=2).model_dump(exclude={"threads"}) == TrainConfig().model_dump(exclude={"threads"})


def test_a_pretrained_run_takes_threads_and_they_do_not_enter_its_fingerprint():
    from universality.pipeline._run import run_fingerprint
    configs = [parse_config(PRETRAINED | {"threads": threads}) for threads in ("auto", 1, 2)]
    assert configs[0].threads == "auto" and PretrainedExperimentConfig.model_fields["threads"].default == "auto"
    assert len({run_fingerprint(config) for config in configs}) == 1
    with pytest.raises(UniversalityError, match="threads must be 'auto' or an integer") as error:
        parse_config(PRETRAINED | {"threads": 0})
    assert "\n" not in str(error.value)
