"""Issue 22's table: nothing lost, nothing reached for — run through the real CLI.

Five classes, one root fix each (docs/reliability.md):

1. the writer re-checks ``--out`` at the moment it swaps (a folder made during the run is
   never replaced);
2. every model, tokenizer, tiktoken and hub-dataset lookup is offline (a process guard fails a
   row if anything datadiet starts opens a socket to anything but loopback);
3. leftovers: temp names carry their owner, so a later run sweeps a killed run's; library
   caches live in the user cache, not ``$TMPDIR``; every row lists ``$TMPDIR`` afterwards;
4. user mistakes are exit 2 naming the file, step or field, before any model loads;
5. SIGTERM says what SIGINT says (the SIGTERM rows are in ``test_cli_faults.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from datadiet.pipeline.atomic import HOST
from datadiet.pipeline.errors import DataError, NoSpaceError, SpecError, UserError
from datadiet.pipeline.io import MANIFEST_FILE
from datadiet.pipeline.score_cache import ScoreCache, cached_scores
from tests.reliability.conftest import Sandbox
from tests.reliability.test_cli_faults import (
    SPEC,
    TRAIN_CONFIG,
    Row,
    check_row,
    curate,
    jsonl,
    records,
    write,
)

INSTRUCTIONS = [
    {"id": f"i{i}", "instruction": f"Name a colour of the sky, take {i}.", "output": "Blue."}
    for i in range(4)
]


# -- 1. the swap re-checks what is at --out -------------------------------------------------


def at_swap(action: str) -> str:
    """A ``python -c`` program: the CLI, with ``action`` done to ``--out`` after the output's
    shards are written and before the writer swaps it into place (the hours-long window of a
    model run, made short)."""
    return (
        "import os, shutil, sys, time\n"
        "from pathlib import Path\n"
        "import datadiet.pipeline.curate as c\n"
        "from datadiet.cli import main\n"
        "out = Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "orig = c.write_batch_shards\n"
        "def hook(*a, **k):\n"
        "    names = orig(*a, **k)\n"
        f"    action = {action!r}\n"
        "    if action == 'replace':\n"
        "        shutil.rmtree(out)\n"
        "    if action == 'wait':\n"
        "        (out.parent / 'ready').touch()\n"
        "        for _ in range(600):\n"
        "            if (out.parent / 'go').exists():\n"
        "                break\n"
        "            time.sleep(0.1)\n"
        "    elif action == 'empty':\n"
        "        out.mkdir()\n"
        "    else:\n"
        "        out.mkdir()\n"
        "        (out / 'mine.txt').write_text('precious')\n"
        "    return names\n"
        "c.write_batch_shards = hook\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def datadiet_output(box: Sandbox, folder: Path | None = None) -> Path:
    folder = folder or box.out
    write(folder / "manifest.json", "{}")
    write(folder / "data-00000-of-00001.parquet", b"old")
    return folder


def run_over_old_output(box: Sandbox) -> list[str]:
    datadiet_output(box)
    return curate(box, write(box.inp / "a.jsonl", jsonl(records(6))), "--overwrite")


def run_into_nothing(box: Sandbox) -> list[str]:
    return curate(box, write(box.inp / "a.jsonl", jsonl(records(6))))


def users_file_kept(box: Sandbox, _: str) -> None:
    assert (box.out / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in box.out.iterdir()) == ["mine.txt"]


def empty_folder_kept(box: Sandbox, _: str) -> None:
    assert box.out.is_dir() and list(box.out.iterdir()) == []


def symlinked_output(box: Sandbox) -> list[str]:
    real = datadiet_output(box, box.out_parent / "real")
    (box.out_parent / "link").symlink_to(real, target_is_directory=True)
    return ["curate", str(write(box.inp / "a.jsonl", jsonl(records(6)))), "--spec",
            str(write(box.root / "spec.yaml", SPEC)), "--out", str(box.out_parent / "link"),
            "--overwrite", "--quiet"]


def link_kept_and_output_written(box: Sandbox, _: str) -> None:
    link, real = box.out_parent / "link", box.out_parent / "real"
    assert link.is_symlink() and Path(os.readlink(link)) == real
    manifest = json.loads((real / MANIFEST_FILE).read_text())
    assert manifest["output"]["rows"] == 6
    assert sorted(p.name for p in box.out_parent.iterdir()) == ["link", "real"]


def symlink_to_users_folder(box: Sandbox) -> list[str]:
    write(box.out_parent / "real" / "notes.txt", "mine")
    (box.out_parent / "link").symlink_to(box.out_parent / "real", target_is_directory=True)
    return ["curate", str(write(box.inp / "a.jsonl", jsonl(records(6)))), "--spec",
            str(write(box.root / "spec.yaml", SPEC)), "--out", str(box.out_parent / "link"),
            "--overwrite", "--quiet"]


def users_folder_behind_link_kept(box: Sandbox, _: str) -> None:
    assert (box.out_parent / "real" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in box.out_parent.iterdir()) == ["link", "real"]


# -- 3. leftovers ------------------------------------------------------------------------------


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def cache_is_out(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(INSTRUCTIONS))
    return curate(box, box.inp / "a.jsonl",
                  spec_text=f"- ifd: {{cache: {json.dumps(str(box.out))}}}\n")


def cache_inside_out(box: Sandbox) -> list[str]:
    datadiet_output(box)
    write(box.inp / "a.jsonl", jsonl(INSTRUCTIONS))
    return curate(box, box.inp / "a.jsonl", "--overwrite",
                  spec_text=f"- ifd: {{cache: {json.dumps(str(box.out / 'cache'))}}}\n")


# -- 4. user mistakes, named before any model loads ---------------------------------------------


def text_corpus(spec_text: str) -> Callable[[Sandbox], list[str]]:
    return lambda box: curate(box, write(box.inp / "a.jsonl", jsonl(records(4))),
                              spec_text=spec_text)


def instruction_corpus(spec_text: str) -> Callable[[Sandbox], list[str]]:
    return lambda box: curate(box, write(box.inp / "a.jsonl", jsonl(INSTRUCTIONS)),
                              spec_text=spec_text)


def cache_is_a_file(box: Sandbox) -> list[str]:
    blocker = write(box.root / "afile", "x")
    return curate(box, write(box.inp / "a.jsonl", jsonl(INSTRUCTIONS)),
                  spec_text=f"- ifd: {{cache: {json.dumps(str(blocker))}}}\n")


def icl(template: str | None, folder: bool = False) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        train = write(box.inp / "train.txt", "0 a bad film\n1 a good film\n")
        test = write(box.inp / "test.txt", "1 a fine film\n")
        path = box.root / "tpl.json"
        if folder:
            path.mkdir()
        else:
            write(path, template or "")
        return ["icl-eval", "--train", str(train), "--test", str(test), "--labels", "0,1",
                "--template", str(path)]
    return setup


def train_config(text: str | None) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        path = box.root / "train.yaml"
        if text is None:
            path.mkdir()
        else:
            write(path, text)
        return ["train", "--data", str(write(box.inp / "a.jsonl", jsonl(records(12)))),
                "--config", str(path), "--out", str(box.out), "--quiet"]
    return setup


ENOSPC_AT_PARQUET = (
    "import sys\n"
    "import pyarrow.parquet as pq\n"
    "class Full(pq.ParquetWriter):\n"
    "    def write_table(self, *a, **k):\n"
    # pyarrow's own spelling of a full disk: an OSError whose errno is only in the message
    "        raise OSError('[Errno 28] Error writing bytes to file. Detail: [errno 28] "
    "No space left on device')\n"
    "pq.ParquetWriter = Full\n"
    "from datadiet.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)

ROWS = [
    # 1. --overwrite never deletes a folder the user made during the run
    Row("race-user-folder-replaces-old-output", run_over_old_output, 2,
        r"not written by datadiet .*appeared or changed while this run was going on",
        output="run", check=users_file_kept, program=lambda: at_swap("replace")),
    Row("race-user-folder-appears-no-overwrite", run_into_nothing, 2,
        r"output exists .*appeared or changed while this run", output="run",
        check=users_file_kept, program=lambda: at_swap("create")),
    Row("race-empty-folder-appears", run_into_nothing, 2, r"output exists", output="run",
        check=empty_folder_kept, program=lambda: at_swap("empty")),
    Row("overwrite-through-symlink", symlinked_output, 0, output="run",
        check=link_kept_and_output_written),
    Row("overwrite-symlink-to-user-folder", symlink_to_users_folder, 2,
        r"not written by datadiet", output="run", check=users_folder_behind_link_kept),
    # 3. leftovers
    Row("model-run-leaves-no-compile-cache", lambda box: ["generate", "--prompt", "hi",
                                                          "--max-new-tokens", "2"], 0,
        output="run"),  # torch inductor's cache went to $TMPDIR/torchinductor_<user>
    Row("cache-is-out", cache_is_out, 2,
        r"spec\.yaml: entry 1 \(ifd\): .*the cache is the run's --out"),
    Row("cache-inside-out", cache_inside_out, 2,
        r"spec\.yaml: entry 1 \(ifd\): .*cache.* inside it", output="kept"),
    # 4. user mistakes: exit 2 naming the file/step/field, before any model loads
    Row("ifd-on-text-corpus", text_corpus("- exact_dedup: {}\n- ifd: {}\n"), 2,
        r"spec\.yaml: entry 2: ifd needs instruction data"),
    Row("judge-on-text-corpus", text_corpus("- judge: {}\n"), 2,
        r"spec\.yaml: entry 1: judge needs instruction data"),
    Row("deita-score-typo", instruction_corpus("- ifd: {}\n- deita: {score: ifd_scor}\n"), 2,
        r"spec\.yaml: entry 2 \(deita\): no column 'ifd_scor' .*score columns by then: ifd_score"),
    Row("deita-without-scorer", text_corpus("- deita: {}\n"), 2,
        r"entry 1 \(deita\): no column 'ifd_score'"),
    Row("cache-is-a-file", cache_is_a_file, 2, r"entry 1 \(ifd\): .*afile: is a file"),
    Row("template-null", icl("null\n"), 2,
        r"tpl\.json: the template file must be a mapping .* empty \(or null\)"),
    Row("template-list", icl("[1, 2]\n"), 2, r"tpl\.json: the template file must be a mapping"),
    Row("template-is-a-folder", icl(None, folder=True), 2,
        r"tpl\.json: is a folder, not a template file"),
    Row("template-bad-json", icl('{"instruction": \n'), 2, r"tpl\.json:\d+: not valid YAML"),
    Row("train-config-yaml-tag", train_config(TRAIN_CONFIG + "lr: !!python/object/apply:os.getcwd []\n"),
        2, r"train\.yaml:\d+: not valid YAML: .*YAML tags are not allowed"),
    Row("train-config-null", train_config("null\n"), 2,
        r"train\.yaml: the training config must be a mapping"),
    Row("train-config-folder", train_config(None), 2, r"train\.yaml: is a folder"),
    Row("enospc-writing-output", run_into_nothing, 2,
        r"no space left on the device while writing .*outputs/out", program=lambda: ENOSPC_AT_PARQUET),
    Row("missing-model-generate", lambda box: ["generate", "--prompt", "hi", "--model", "org/nope"],
        2, r"model 'org/nope' is neither a local folder nor in the Hugging Face cache"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_row(row: Row, box: Sandbox) -> None:
    check_row(row, box)


def test_the_table_is_big_enough() -> None:
    assert len(ROWS) + len(NETWORK_ROWS) >= 25


# -- 1. a second process creates --out while the run is in flight -----------------------------


def test_folder_made_by_another_process_during_the_run_survives(box: Sandbox) -> None:
    """The run waits at its swap; this test process (the user) makes ``--out`` with a file of
    its own meanwhile; the run must refuse, keep the file and leave no temp data."""
    datadiet_output(box)
    args = curate(box, write(box.inp / "a.jsonl", jsonl(records(6))), "--overwrite")
    env = box.env()
    proc = subprocess.Popen([sys.executable, "-c", at_swap("wait"), *args], cwd=box.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if (box.out_parent / "ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (box.out_parent / "ready").exists(), proc.communicate()[1].decode()[-2000:]
        for old in box.out.iterdir():  # the user clears the old output and puts theirs there
            old.unlink()
        (box.out / "mine.txt").write_text("precious")
        (box.out_parent / "go").touch()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = err.decode()
    assert proc.returncode == 2, stderr[-2000:]
    assert "appeared or changed while this run was going on" in stderr
    assert (box.out / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in box.out_parent.iterdir()) == ["go", "out", "ready"]
    assert list(box.tmp.iterdir()) == []


# -- 3. a SIGKILLed run's leftovers are swept by the next run -----------------------------------


SIGKILL_AT_WRITE = (
    "import os, signal, sys\n"
    "import datadiet.pipeline.curate as c\n"
    "from datadiet.cli import main\n"
    "orig = c.write_batch_shards\n"
    "def hook(*a, **k):\n"
    "    orig(*a, **k)\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "c.write_batch_shards = hook\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_sigkilled_run_leaves_what_the_next_run_sweeps(box: Sandbox) -> None:
    args = curate(box, write(box.inp / "a.jsonl", jsonl(records(6))))
    killed = box.run(args, code=SIGKILL_AT_WRITE)
    assert killed.returncode == -signal.SIGKILL
    scratch = [p.name for p in box.tmp.iterdir()]
    temp_out = [p.name for p in box.out_parent.iterdir()]
    assert any(n.startswith(f"datadiet-run-{HOST}-") for n in scratch), scratch
    assert any(n.startswith(f".out.tmp-{HOST}-") for n in temp_out), temp_out
    assert any((box.tmp / n / "corpus.arrow").exists() for n in scratch)
    again = box.run(args)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert list(box.tmp.iterdir()) == []
    assert sorted(p.name for p in box.out_parent.iterdir()) == ["out"]


def test_a_run_sweeps_dead_runs_leftovers_only(box: Sandbox) -> None:
    """A SIGKILLed run's temp output and scratch copies go; a live run's and another host's
    (a shared file system) stay."""
    dead = dead_pid()
    write(box.out_parent / f".out.tmp-{HOST}-{dead}-abc" / "data.parquet", b"half")
    write(box.tmp / f"datadiet-run-{HOST}-{dead}-xyz" / "corpus.arrow", b"x" * 1000)
    write(box.tmp / f"datadiet-step-{HOST}-{dead}-q" / "features" / "a.npy", b"x")
    live = write(box.tmp / f"datadiet-run-{HOST}-{os.getpid()}-live" / "corpus.arrow", b"live")
    foreign = write(box.tmp / f"datadiet-run-0badc0de-{dead}-other" / "corpus.arrow", b"other")
    proc = box.run(curate(box, write(box.inp / "a.jsonl", jsonl(records(6)))))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert {p.name for p in box.tmp.iterdir()} == {live.parent.name, foreign.parent.name}
    assert sorted(p.name for p in box.out_parent.iterdir()) == ["out"]


def test_old_output_of_a_run_killed_mid_swap_is_put_back(box: Sandbox) -> None:
    """Killed between moving the old output aside and moving the new one in: the next run
    puts the old one back (then refuses to replace it without --overwrite)."""
    backup = datadiet_output(box, box.out_parent / f".out.old-{HOST}-{dead_pid()}-ab12cd34")
    proc = box.run(curate(box, write(box.inp / "a.jsonl", jsonl(records(6)))))
    assert proc.returncode == 2 and "output exists" in proc.stderr.decode()
    assert not backup.exists() and (box.out / "manifest.json").read_text() == "{}"


# -- 4. full disks, for real: a tiny tmpfs for --out and for TMPDIR ------------------------------


@pytest.fixture()
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def big_input(box: Sandbox) -> Path:
    """~1 MB of text that does not compress away (hex of random bytes)."""
    docs = [{"id": f"r{i}", "text": os.urandom(2000).hex()} for i in range(250)]
    return write(box.inp / "big.jsonl", jsonl(docs))


def test_full_disk_for_the_output_is_named(box: Sandbox, tiny_disk: Path) -> None:
    out = tiny_disk / "out"
    proc = box.run(["curate", str(big_input(box)), "--spec", str(write(box.root / "s.yaml", SPEC)),
                    "--out", str(out), "--quiet"])
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr[-2000:]
    assert re.search(rf"no space left on the device while writing {re.escape(str(out))}", stderr)
    assert "Traceback" not in stderr and list(tiny_disk.iterdir()) == []
    assert list(box.tmp.iterdir()) == []


def test_full_temp_disk_is_named(box: Sandbox, tiny_disk: Path) -> None:
    env_tmp = tiny_disk
    args = ["curate", str(big_input(box)), "--spec", str(write(box.root / "s.yaml", SPEC)),
            "--out", str(box.out), "--quiet"]
    env = box.env() | {"TMPDIR": str(env_tmp)}
    proc = subprocess.run([sys.executable, "-m", "datadiet", *args], cwd=box.root, env=env,
                          capture_output=True, timeout=300)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr[-2000:]
    assert "scratch folder" in stderr and "TMPDIR" in stderr and str(env_tmp) in stderr
    assert "Traceback" not in stderr and list(env_tmp.iterdir()) == []
    assert not box.out.exists()


# -- 2. nothing reached for: a socket guard on every process datadiet starts ---------------------


SITECUSTOMIZE = '''\
import os
import socket
import sys

_LOG = os.environ["DATADIET_TEST_NET_LOG"]
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "", None}


def _guard(event, args):
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else address
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOOPBACK:
        return
    with open(_LOG, "a") as log:
        log.write(f"{event} {host} pid={os.getpid()}\\n")
    raise OSError(f"test guard: no network to {host}")


sys.addaudithook(_guard)
'''


def guarded_run(box: Sandbox, args: list[str], stdin: bytes = b"") -> tuple[int, str, float, str]:
    """``datadiet ARGS`` without the HF offline switches, every Python process it starts
    guarded: returns the exit status, stderr, seconds and the guard's log."""
    guard = box.root / "netguard"
    write(guard / "sitecustomize.py", SITECUSTOMIZE)
    log = box.root / "net.log"
    env = box.env()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    env["PYTHONPATH"] = f"{guard}{os.pathsep}{env['PYTHONPATH']}"
    env["DATADIET_TEST_NET_LOG"] = str(log)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "datadiet", *args], input=stdin, cwd=box.root,
                          env=env, capture_output=True, timeout=300)
    seconds = time.perf_counter() - start
    return (proc.returncode, proc.stderr.decode("utf-8", "replace"), seconds,
            log.read_text() if log.exists() else "")


PROMPT = b"The river rose in the night.\n\nThe village woke to water in the streets.\n"

NETWORK_ROWS = [
    ("curate-hub-dataset", lambda box: curate(box, "org/name"), b"",
     r"org/name: not a local path, and not a dataset in the Hugging Face cache.*hf download"),
    ("curate-step-hub-model", lambda box: curate(
        box, write(box.inp / "a.jsonl", jsonl(records(4))),
        spec_text="- perplexity: {model: org/nope, keep: 0.5}\n"), b"",
     r"model 'org/nope' is neither a local folder nor in the Hugging Face cache"),
    ("compress-tiktoken-o200k", lambda box: ["compress", "--rate", "0.5", "--target-tokenizer",
                                             "o200k_base"], PROMPT,
     r"tiktoken encoding 'o200k_base' is not available offline.*Available: cl100k_base"),
    ("compress-hub-tokenizer-gpt2", lambda box: ["compress", "--rate", "0.5",
                                                 "--target-tokenizer", "gpt2"], PROMPT,
     r"'gpt2' is neither a local folder nor in the Hugging Face cache.*Available offline: .*"
     r"SmolLM2"),
    ("compress-hub-model", lambda box: ["compress", "--rate", "0.5", "--model", "org/nope"],
     PROMPT, r"model 'org/nope' is neither a local folder"),
    ("generate-hub-model", lambda box: ["generate", "--prompt", "hi", "--model", "org/nope"], b"",
     r"model 'org/nope' is neither a local folder"),
]


@pytest.mark.parametrize("row", NETWORK_ROWS, ids=[r[0] for r in NETWORK_ROWS])
def test_network_row(row: tuple, box: Sandbox) -> None:
    _, setup, stdin, message = row
    code, stderr, seconds, net = guarded_run(box, setup(box), stdin)
    assert net == "", f"datadiet reached for the network:\n{net}"
    assert code == 2, stderr[-3000:]
    assert re.search(message, stderr, re.DOTALL), stderr[-3000:]
    assert "Traceback" not in stderr
    assert seconds < 30, f"took {seconds:.0f} s: retries?"
    assert list(box.tmp.iterdir()) == [], "temp data left behind"


def test_the_guard_catches_a_connection(box: Sandbox) -> None:
    """The guard itself works: a process that does reach out is caught and logged."""
    guard = box.root / "netguard"
    write(guard / "sitecustomize.py", SITECUSTOMIZE)
    log = box.root / "net.log"
    env = box.env() | {"PYTHONPATH": str(guard), "DATADIET_TEST_NET_LOG": str(log)}
    subprocess.run([sys.executable, "-c", "import socket\ntry:\n"
                    "    socket.create_connection(('192.0.2.1', 80), timeout=0.1)\n"
                    "except OSError:\n    pass\n"], env=env, timeout=60)
    assert "192.0.2.1" in log.read_text()


# -- 4. the Python API: clear errors from datadiet, before any model loads ---------------------


@pytest.mark.parametrize(("prompt", "kwargs", "error", "message"), [
    (None, {}, TypeError, r"prompt must be a string or a list of strings, got NoneType"),
    (["a paragraph", None], {}, TypeError, r"prompt must be a string or a list of strings"),
    ("bad \ud800 half", {}, ValueError, r"prompt: character 4 is a lone surrogate"),
    ("fine", {"question": "why \udc80?"}, ValueError,
     r"question of prompt: character 4 is a lone surrogate"),
    ("fine text here", {"target_tokenizer": "o200k_base"}, UserError,
     r"tiktoken encoding 'o200k_base' is not available offline"),
    ("fine text here", {"target_tokenizer": "gpt2"}, UserError,
     r"'gpt2' is neither a local folder nor in the Hugging Face cache"),
], ids=["none", "none-segment", "lone-surrogate", "surrogate-in-question", "tiktoken-o200k",
        "hub-tokenizer"])
def test_compress_refuses_before_loading_a_model(prompt: object, kwargs: dict,
                                                 error: type[Exception], message: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import datadiet
    from datadiet.prompting.compression import api

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scoring model would load before the check")

    monkeypatch.setattr(api.Compressor, "__init__", no_model)
    start = time.perf_counter()
    with pytest.raises(error, match=message):
        datadiet.compress(prompt, rate=0.5, **kwargs)  # type: ignore[arg-type]
    assert time.perf_counter() - start < 10


def test_curate_api_checks_the_plan_before_any_step() -> None:
    import datadiet

    with pytest.raises(SpecError, match=r"entry 1: ifd needs instruction data"):
        datadiet.curate([{"text": "a document"}], ["ifd"])
    with pytest.raises(SpecError, match=r"entry 2 \(deita\): no column 'ifd_scor'.*ifd_score"):
        datadiet.curate(INSTRUCTIONS, ["ifd", {"deita": {"score": "ifd_scor"}}])


# -- 4. a corrupt score cache is named, never a raw sqlite3 error --------------------------------


def filled_cache(folder: Path, rows: int = 2000) -> Path:
    cache = ScoreCache("model-x", "ifd-test", 64, folder)
    cache.put_many([(i.to_bytes(16, "little"), np.arange(4.0) + i) for i in range(rows)])
    cache.close()
    return folder / "scores.sqlite"


@pytest.mark.parametrize("damage", ["garbage", "cut-in-half"])
def test_corrupt_score_cache_is_named(damage: str, tmp_path: Path) -> None:
    path = filled_cache(tmp_path)
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: the score cache is unreadable"
                       r".*move it away.*cache: false"):
        ScoreCache("model-x", "ifd-test", 64, tmp_path)


def test_wrong_sized_cache_entries_are_scored_again(tmp_path: Path) -> None:
    """Entries whose blob is not ``width`` floats (torn, or another version's) are misses:
    computed again and replaced, never broadcast into the wrong shape."""
    filled_cache(tmp_path, rows=3)
    db = sqlite3.connect(tmp_path / "scores.sqlite")
    db.execute("UPDATE scores SET value = ? WHERE row = ?", (b"\x00" * 12, (0).to_bytes(16, "little")))
    db.execute("UPDATE scores SET value = ? WHERE row = ?", (np.arange(2.0).tobytes(),
                                                             (1).to_bytes(16, "little")))
    db.commit()
    db.close()
    cache = ScoreCache("model-x", "ifd-test", 64, tmp_path)
    keys = [i.to_bytes(16, "little") for i in range(3)]
    computed_rows: list[int] = []

    def compute(rows: list[int]) -> np.ndarray:
        computed_rows.extend(rows)
        return np.stack([np.arange(4.0) + 100 + r for r in rows])

    values, computed = cached_scores(keys, compute, cache, width=4, costs=[1, 1, 1], chunk_cost=10)
    assert computed == 2 and sorted(computed_rows) == [0, 1]
    np.testing.assert_array_equal(values[2], np.arange(4.0) + 2)  # the good entry was read
    np.testing.assert_array_equal(cache.get_many(keys[:1])[keys[0]], np.arange(4.0) + 100)


def test_score_cache_that_is_a_file(tmp_path: Path) -> None:
    blocker = write(tmp_path / "cache", "not a folder")
    with pytest.raises(SpecError, match=r"cache: the score cache must be a folder"):
        ScoreCache("m", "x", 64, blocker)


def test_score_cache_on_a_full_disk_is_named(tmp_path: Path, tiny_disk: Path) -> None:
    cache = ScoreCache("m", "x", 64, tiny_disk)
    big = [(i.to_bytes(16, "little"), np.zeros(512)) for i in range(200)]  # ~800 kB
    with pytest.raises(NoSpaceError, match=r"scores\.sqlite: no space left for the score cache"):
        cache.put_many(big)
    cache.close()
