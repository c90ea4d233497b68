"""The bad-input and fault suite: helpers that run the real CLI in a sandbox.

Every CLI row runs ``python -m datadiet`` in a subprocess with a private ``TMPDIR`` and a known
umask, so a row can check what a user would see: the exit status, the message, that the input
is byte-for-byte unchanged, that no output and no temp data is left behind, and the mode bits
of what was written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UMASK = 0o027  # not the usual 022, so "follows the umask" cannot pass by accident


@dataclass
class Sandbox:
    """A run's world: inputs under ``inp/``, outputs under ``out/``, temp data under ``tmp/``."""

    root: Path
    inp: Path = field(init=False)
    out_parent: Path = field(init=False)
    tmp: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inp = self.root / "inp"
        self.out_parent = self.root / "outputs"
        self.tmp = self.root / "tmp"
        for d in (self.inp, self.out_parent, self.tmp):
            d.mkdir()

    @property
    def out(self) -> Path:
        return self.out_parent / "out"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TMPDIR=str(self.tmp), PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        # datadiet itself must keep torch's and tiktoken's caches out of TMPDIR (issue 22)
        for name in ("DATADIET_DEBUG", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                     "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
            env.pop(name, None)
        return env

    def run(self, args: list[str], stdin: bytes | None = None, code: str | None = None,
            timeout: float = 300, raw: bool = False,
            unset_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``python -m datadiet ARGS`` (or ``python -c CODE ARGS``, or with ``raw``
        ``python ARGS``) in the sandbox, without the variables named in ``unset_env``."""
        env = self.env()
        for name in unset_env:
            env.pop(name, None)
        if raw:
            cmd = [sys.executable, *args]
        elif code:
            cmd = [sys.executable, "-c", code, *args]
        else:
            cmd = [sys.executable, "-m", "datadiet", *args]
        return subprocess.run(cmd, input=stdin if stdin is not None else b"", capture_output=True,
                              cwd=self.root, env=env, timeout=timeout,
                              preexec_fn=lambda: os.umask(UMASK))

    def snapshot(self) -> dict[str, tuple[str, int]]:
        """Every input file's hash and mode, to prove a run left its inputs alone."""
        snap = {}
        for p in sorted(self.inp.rglob("*")):
            if p.is_file():
                snap[str(p.relative_to(self.inp))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                      p.stat().st_mode)
            elif p.is_dir():
                snap[str(p.relative_to(self.inp)) + "/"] = ("dir", p.stat().st_mode)
        return snap

    def leftovers(self) -> set[str]:
        """Temp data on disk: anything in TMPDIR, hidden ``.out.tmp-*``/``.old-*`` folders.

        Compared before and after a run (an input may hold such a folder on purpose).
        """
        left = {str(p) for p in self.tmp.iterdir()}
        for parent in {self.out_parent, self.inp, *[p for p in self.inp.rglob("*") if p.is_dir()]}:
            left |= {str(p) for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name}
        return left


def assert_modes_follow_umask(folder: Path, umask: int = UMASK, *, root: bool = True) -> None:
    """Every file and folder under ``folder`` (and ``folder`` itself, with ``root``) has the
    mode a plain open/mkdir would give."""
    for p in [folder, *folder.rglob("*")][0 if root else 1:]:
        mode = stat.S_IMODE(p.stat().st_mode)
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert mode == want, f"{p}: mode {oct(mode)}, expected {oct(want)} under umask {oct(umask)}"


@pytest.fixture()
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def signal_self_code(where: str, signum: int) -> str:
    """A ``python -c`` program: the CLI, with a signal raised at ``where`` mid-run.

    ``where`` is ``"write"`` (after the shards of the output are written, before the rename),
    ``"map"`` (inside a step's per-batch map, on the map thread, while the file is read) or
    ``"step"`` (inside the first step's reduce, after its features were computed). The program then calls the real CLI entry point.
    """
    return (
        "import os, signal, sys\n"
        # A shell starts background jobs with SIGINT ignored and Python then never raises
        # KeyboardInterrupt; a user's Ctrl-C reaches a foreground process, so restore that.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import datadiet.pipeline.curate as c\n"
        "from datadiet.cli import main\n"
        f"SIG = {int(signum)}\n"
        "if " + repr(where) + " == 'write':\n"
        "    orig = c.write_batch_shards\n"
        "    def hook(*a, **k):\n"
        "        names = orig(*a, **k)\n"
        "        os.kill(os.getpid(), SIG)\n"
        "        return names\n"
        "    c.write_batch_shards = hook\n"
        "elif " + repr(where) + " == 'map':\n"
        # the steps' maps run on a second thread while the main thread reads: the signal
        # arrives in the main thread, which must stop the map thread and clean up
        "    from datadiet.selectors.exact import ExactDedup\n"
        "    orig_map = ExactDedup.row_features\n"
        "    def hook(self, texts):\n"
        "        os.kill(os.getpid(), SIG)\n"
        "        return orig_map(self, texts)\n"
        "    ExactDedup.row_features = hook\n"
        "else:\n"
        "    from datadiet.selectors.exact import ExactDedup\n"
        "    orig = ExactDedup.select_from_features\n"
        "    def hook(self, ds, ctx, features):\n"
        "        ctx.scratch('probe')\n"
        "        os.kill(os.getpid(), SIG)\n"
        "        return orig(self, ds, ctx, features)\n"
        "    ExactDedup.select_from_features = hook\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


__all__ = ["UMASK", "Sandbox", "assert_modes_follow_umask", "signal", "signal_self_code"]
