"""The checks `config.py` runs before anything is written: field types shared by the config sections
(seeds, threads, run names, devices, unit-set patterns), the memory a language run plans to use, the
config file itself (UTF-8, size, TOML), and one-line messages from pydantic's errors.
"""

from __future__ import annotations

import contextvars
import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Literal

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from ._rundir import check_run_name
from .errors import UniversalityError, short_repr

__all__ = ["StrictSection", "VALIDATING", "MemoryBudget", "Seed", "Threads", "RunName", "Device", "Pattern", "MEMORY_GIB", "MAX_CONFIG_BYTES", "describe",
           "language_run_gib", "read_toml", "one_line",
           "check_plain_values"]

MEMORY_GIB = 20  # what a run may plan to use: a 24 GiB machine, less the system and Python
MAX_CONFIG_BYTES = 1 << 20  # a config file over 1 MiB is not a config
MAX_DEPTH = 8  # tables and lists inside each other: the deepest config ([[model]] lists) uses 3


def _check_threads(value):
    """Torch threads: "auto" (idle available cores) or a positive integer (lowered to the available
    cores at run time, with a warning; see `universality._threads.resolve_threads`)."""
    if value == "auto" or (type(value) is int and 1 <= value <= 1 << 16):
        return value
    raise ValueError(f"threads must be 'auto' or an integer from 1 to 65536, got {short_repr(value)}")


_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,3})?|mps")


def _check_device(value: str) -> str:
    """A torch device that exists on this machine: cpu, cuda, cuda:N (N < GPUs here) or mps; "auto" is
    resolved here (CUDA when present, else cpu), so the saved config names the device the run used."""
    if value == "auto":
        from ._inputs import resolve_device
        return resolve_device(value)
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"device {short_repr(value)} is not one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if value == "cpu":
        return value
    import torch  # only for a non-CPU device: keeps config checks fast
    if value == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' is not available on this machine; use 'cpu'")
        return value
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(value.partition(":")[2] or 0)
    if index >= gpus:
        raise ValueError(f"device {value!r} does not exist: this machine has {gpus} CUDA device(s); use 'cpu'")
    return value


def _check_budget(value):
    """`memory_budget`: "auto", "none", a size string ("12GiB") or a number of bytes (checked here)."""
    if value not in ("auto", "none"):
        from .moments import parse_bytes
        try:
            parse_bytes(value)
        except UniversalityError as error:
            raise ValueError(str(error)) from None
    return value


Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # numpy and torch both take seeds in [0, 2^32)
Threads = Annotated[int | Literal["auto"], BeforeValidator(_check_threads)]
RunName = Annotated[str, AfterValidator(check_run_name)]  # a plain directory name, 1-100 characters
Device = Annotated[str, AfterValidator(_check_device)]
Pattern = Annotated[str, Field(min_length=1, max_length=200)]  # a unit-set name or shell pattern
MemoryBudget = Annotated[str | int, AfterValidator(_check_budget)]


VALIDATING = contextvars.ContextVar("validating", default=False)  # pydantic calls each section's __init__


class StrictSection(BaseModel):
    """Frozen, unknown keys forbidden; built directly in Python, a bad value raises one line."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, **data):
        if VALIDATING.get():  # a section of a config being validated: the outermost call reports
            super().__init__(**data)
            return
        token = VALIDATING.set(True)
        try:
            super().__init__(**data)
        except pydantic.ValidationError as error:
            raise UniversalityError(describe(error, type(self).__name__, type(self))) from None
        finally:
            VALIDATING.reset(token)


def language_run_gib(config) -> float:
    """Rough peak memory of a language run in GiB: the larger of training one seed (parameters x 16
    bytes for weights, gradients and AdamW moments, plus activations) and streaming (a float32 or
    float64 moment state over every seed's MLP neurons, or the `[scale] memory_budget` when one is
    set and smaller: the plan then cuts the state into passes; plus one batch of activations)."""
    lang, model = config.language, config.model
    vocab = lang.n_classes * lang.tokens_per_class + 2 * lang.n_bracket_types + lang.seq_len + 4
    params = model.n_layers * (4 * model.d_model**2 + 2 * model.d_model * model.d_mlp) + 2 * vocab * model.d_model
    per_token = model.n_layers * (4 * model.d_mlp + 16 * model.d_model + 2 * model.n_heads * lang.seq_len) + 4 * vocab
    training = 16 * params + 4 * per_token * config.train.batch_size * lang.seq_len
    units = len(config.seeds) * model.n_layers * model.d_mlp
    state_bytes = 8 if config.compare.accumulate == "float64" else 4
    batch_tokens = config.collect.batch_rows * lang.seq_len * len(config.seeds)  # one batch through every seed
    state = state_bytes * units * units
    budget = config.scale.memory_budget
    if budget not in ("auto", "none"):
        from .moments import parse_bytes
        state = min(state, parse_bytes(budget))
    streaming = state + 4 * per_token * batch_tokens
    return max(training, streaming) / 2**30


def describe(error: pydantic.ValidationError, source: str, root: type[BaseModel]) -> str:
    """The first validation problem as one line: where, what, and the valid choices or the limit."""
    errors = error.errors(include_url=False)
    # the first field's deepest error: for a union (one [model] table or a list of them) the branch that got furthest
    first = max((e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]), key=lambda e: len(e["loc"]))
    where = short_repr(_where(first["loc"])) if first["loc"] else ""
    if first["type"] == "extra_forbidden":
        section = _section_at(root, first["loc"])
        valid = f"; valid keys here: {', '.join(section.model_fields)}" if section else ""
        return one_line(f"{source}: unknown key {where}{valid}")
    message = first["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else "is not valid"
    if first["type"] == "value_error":  # our own validators name the value
        return one_line(f"{source}: {where} {message}")
    return one_line(f"{source}: {where} {message} (got {short_repr(first.get('input'))})")


def _where(loc: tuple) -> str:
    """'model.1.hidden' from pydantic's ('model', 'list[tagged-union[...]]', 1, 'mlp', 'hidden'): no union
    names, no union tags."""
    parts, tag_next = [], False
    for part in loc:
        if "[" in str(part):  # a union or list member: pydantic's internal name
            tag_next = "tagged-union" in str(part)
        elif isinstance(part, int):
            parts.append(str(part))
        elif tag_next:  # the tag that picked the union member ('mlp')
            tag_next = False
        else:
            parts.append(part)
    return ".".join(parts) or "(top level)"


def _section_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class holding the last key of `loc` (None when a union leaves it open)."""
    candidates = [root]
    for part in loc[:-1]:
        if isinstance(part, int) or "[" in str(part):
            continue
        fields = [c.model_fields[part] for c in candidates if part in c.model_fields]
        if fields:
            candidates = _model_classes(fields[0].annotation) or candidates
        else:  # a union's tag ('mlp'): keep the member whose field defaults to it
            candidates = [c for c in candidates if any(f.default == part for f in c.model_fields.values())]
    return candidates[0] if len(candidates) == 1 else None


def _model_classes(annotation) -> list[type[BaseModel]]:
    """The config classes inside an annotation (through unions, lists and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return list(dict.fromkeys(c for arg in typing.get_args(annotation) for c in _model_classes(arg)))


def check_plain_values(data: dict, source: str) -> None:
    """Refuse, naming the key, what no config field takes: integers outside TOML's 64 bits and nesting
    deeper than `MAX_DEPTH` (walked without recursion, so any depth gives one line)."""
    stack = [((str(key),), value) for key, value in data.items()]
    while stack:
        path, value = stack.pop()
        where = short_repr(".".join(path))
        if len(path) > MAX_DEPTH:
            raise UniversalityError(f"{source}: {short_repr('.'.join(path[:3]) + '...')} is nested more than "
                                    f"{MAX_DEPTH} levels deep; a config is at most {MAX_DEPTH}")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise UniversalityError(f"{source}: {where} is {short_repr(value)}; TOML integers are 64-bit")
        if isinstance(value, dict):
            stack += [((*path, str(key)), item) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [((*path, str(index)), item) for index, item in enumerate(value)]


def one_line(message: str) -> str:
    """`message` with every run of whitespace (newlines too) made one space."""
    return " ".join(message.split())


def read_toml(path: str | Path) -> tuple[dict, str]:
    """The table in the TOML file at `path` and the file's name for messages (quoted, shortened)."""
    path = Path(path)
    shown = short_repr(str(path))
    if not path.is_file():
        raise UniversalityError(f"config file {shown} does not exist (or is not a file)")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UniversalityError(f"config file {shown} cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UniversalityError(f"config file {shown} has {len(raw):,} bytes; a config has at most "
                                f"{MAX_CONFIG_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UniversalityError(f"config file {shown} is not UTF-8 text (byte {error.start}); "
                                "save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UniversalityError(one_line(f"config file {shown} is not valid TOML ({error})")) from None
    except RecursionError:
        raise UniversalityError(f"config file {shown} is nested too deeply to be a config") from None
    return data, shown
