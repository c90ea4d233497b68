"""Every code block of README.md and docs/*.md runs, in order, as a user would run it.

A README example that breaks must fail `make test`, so the blocks are the tests:
- ```bash blocks run with `bash -euo pipefail`, ```python blocks as scripts, both in one
  scratch folder per page that starts as a copy of `examples/`, with this venv's `datadiet` and
  `python` first on PATH and the offline settings the Makefile exports;
- a ```yaml block whose first line is `# NAME.yaml` (a comment naming the file) is written to
  that file before the page's commands run, so the spec a page shows is the spec it runs;
- ```text and ```console blocks are output, never run;
- `<!-- docs-test: skip REASON -->` on the line before a block skips it, with the reason shown
  (only for what cannot run here, such as a CUDA GPU).
Each block is one test, so `pytest --durations=0 tests/test_docs.py` times every example.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"bash", "sh", "python"}
SHOWN_ONLY = {"text", "console", "", "json", "jsonl", "markdown", "md", "c", "diff"}
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.M | re.S)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(?P<reason>.*?)\s*-->\s*$")
FILE_HEADER = re.compile(r"^#\s*(?P<name>[\w./-]+\.ya?ml)\b")
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it is, its language and code, and any skip reason."""

    page: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}-{self.lang}"


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append(Block(page, line, match["lang"].lower(), match["body"],
                           skip["reason"] or "marked skip" if skip else None))
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]
COMMANDS = [b for b in ALL_BLOCKS if b.lang in RUNNABLE]


def test_every_block_has_a_known_kind() -> None:
    """A block in a language the runner does not know would silently never run."""
    unknown = [b.name for b in ALL_BLOCKS
               if b.lang not in RUNNABLE | SHOWN_ONLY | {"yaml", "yml"}]
    assert not unknown, f"blocks the docs test cannot run or classify: {unknown}"


def test_yaml_blocks_parse() -> None:
    import yaml

    for block in ALL_BLOCKS:
        if block.lang in {"yaml", "yml"}:
            yaml.safe_load(block.code)  # a broken spec on a page fails here, with its name


def _environment(workdir: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_HOME": str(workdir / ".prefect"), "MPLBACKEND": "Agg",
           # pages about the experiments build their inputs from the real-data kit
           "DATADIET_SHARED_DATA": os.environ.get("DATADIET_SHARED_DATA",
                                                 str(ROOT.parent / "shared" / "data"))}
    for inherited in ("PREFECT_API_URL", "VIRTUAL_ENV_PROMPT"):
        env.pop(inherited, None)
    return env


_WORKDIRS: dict[Path, Path] = {}


def _workdir_for(page: Path, factory: pytest.TempPathFactory) -> Path:
    """One scratch folder per page: examples/ copied in, the page's named YAML files written."""
    if page not in _WORKDIRS:
        workdir = factory.mktemp(page.stem.lower())
        shutil.copytree(ROOT / "examples", workdir, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for block in blocks_of(page):
            header = FILE_HEADER.match(block.code)
            if block.lang in {"yaml", "yml"} and header:
                (workdir / header["name"]).write_text(block.code)
        _WORKDIRS[page] = workdir
    return _WORKDIRS[page]


@pytest.mark.parametrize("block", COMMANDS, ids=[b.name for b in COMMANDS])
def test_block_runs(block: Block, tmp_path_factory: pytest.TempPathFactory) -> None:
    if block.skip:
        pytest.skip(block.skip)
    workdir = _workdir_for(block.page, tmp_path_factory)
    if block.lang == "python":
        script = workdir / f"_block_{block.line}.py"
        script.write_text(block.code)
        argv = [sys.executable, script.name]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(argv, cwd=workdir, env=_environment(workdir), capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{block.name} exited {proc.returncode}\n--- code\n{block.code}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
