"""One row per bad input or fault a careful new user found (issue 8), run through the real CLI.

Each row builds its inputs in a sandbox, runs ``python -m datadiet ...`` in a subprocess and
checks the exit status, that the message names the file/line/field, that the inputs are
unchanged, that nothing is left in TMPDIR or beside the output, and — where an output is
written — that its mode bits follow the umask.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datadiet.pipeline.io import MANIFEST_FILE
from tests.reliability.conftest import Sandbox, assert_modes_follow_umask, signal_self_code

DOCS = [
    "The river rose in the night and the village woke to water in the streets.",
    "A recipe for bread needs flour, water, salt and a great deal of patience.",
    "The committee met on Tuesday to discuss the budget for the coming year.",
    "Stars form in clouds of gas that collapse under their own gravity.",
]
SPEC = "- exact_dedup: {}\n"


def jsonl(records: list, *, raw_lines: list[bytes] = ()) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"".join(raw_lines)


def records(n: int = 4, ids: bool = True) -> list[dict]:
    return [({"id": f"d{i}"} if ids else {}) | {"text": DOCS[i % len(DOCS)] + f" ({i})"}
            for i in range(n)]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def spec(box: Sandbox, text: str = SPEC) -> str:
    return str(write(box.root / "spec.yaml", text))


def curate(box: Sandbox, source: Path | str, *extra: str, spec_text: str = SPEC) -> list[str]:
    return ["curate", str(source), "--spec", spec(box, spec_text), "--out", str(box.out),
            "--quiet", *extra]


@dataclass
class Row:
    """A bad input or fault: how to set it up, and what the user must see."""

    name: str
    setup: Callable[[Sandbox], list[str]]
    code: int
    message: str = ""  # a regex the stderr must match
    stdin: bytes | None = None
    output: str = "none"  # "none": no OUT; "written": a curated OUT; "kept": OUT as before; "run"
    check: Callable[[Sandbox, str], None] | None = None
    program: Callable[[], str] | None = None  # a python -c wrapper around the CLI


# -- security and data loss ------------------------------------------------------------------


def out_is_input_folder(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return ["curate", str(box.inp), "--spec", spec(box), "--out", str(box.inp), "--overwrite",
            "--quiet"]


def out_inside_input(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return ["curate", str(box.inp), "--spec", spec(box), "--out", str(box.inp / "curated"),
            "--quiet"]


def out_holds_input_file(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    write(box.inp / "manifest.json", "{}")  # even a folder that looks like a datadiet output
    return ["curate", str(box.inp / "a.jsonl"), "--spec", spec(box), "--out", str(box.inp),
            "--overwrite", "--quiet"]


def out_holds_dsir_target(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    target = write(box.out / "target.txt", DOCS[0])
    write(box.out / "manifest.json", "{}")
    return curate(box, box.inp / "a.jsonl", "--overwrite",
                  spec_text=f"- dsir: {{target: {json.dumps(str(target))}, keep: 2}}\n")


def overwrite_user_folder(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    write(box.out / "my-notes.txt", "precious")
    return curate(box, box.inp / "a.jsonl", "--overwrite")


def exists_without_overwrite(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    write(box.out / "manifest.json", "{}")
    return curate(box, box.inp / "a.jsonl")


def overwrite_own_output(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    write(box.out / "manifest.json", "{}")
    write(box.out / "data-00000-of-00001.parquet", b"old")
    return curate(box, box.inp / "a.jsonl", "--overwrite")


def plain_success(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records(6)))
    return curate(box, box.inp / "a.jsonl", "--rows-per-shard", "4")


def signal_run(box: Sandbox) -> list[str]:
    """A run that the row's program interrupts with a signal (see ``signal_self_code``)."""
    return curate(box, write(box.inp / "a.jsonl", jsonl(records(6))))


# -- bad input, named ------------------------------------------------------------------------


def file_row(name: str, data: bytes, *extra: str) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        return curate(box, write(box.inp / name, data), *extra)
    return setup


GOOD = jsonl(records(3))
TRUNCATED_GZ = gzip.compress(jsonl(records(200)))[:-300]
SURROGATE = GOOD + b'{"id": "s", "text": "bad \\ud800 half"}\n'
DEEP = GOOD + b"[" * 200_000 + b"]" * 200_000 + b"\n"
BOM = b"\xef\xbb\xbf" + jsonl(records(3))
ARRAY = json.dumps(records(3), indent=2).encode()
REPEATED_ID = jsonl([{"id": "a", "text": DOCS[0]}, {"id": "b", "text": DOCS[1]},
                     {"id": "a", "text": DOCS[2]}])


def parquet_row(table: pa.Table) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        box.inp.mkdir(exist_ok=True)
        pq.write_table(table, box.inp / "p.parquet")
        return curate(box, box.inp / "p.parquet")
    return setup


def curated_output_as_input(box: Sandbox) -> list[str]:
    """A folder datadiet wrote: only its data shards are read (not manifest.json, removed/)."""
    folder = box.inp / "curated"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": DOCS[:2]}), folder / "data-00000-of-00001.parquet")
    write(folder / "manifest.json", json.dumps({"output": {"shards": ["data-00000-of-00001.parquet"]}}))
    (folder / "removed").mkdir()
    pq.write_table(pa.table({"id": ["c"], "step": ["x"], "reason": ["y"]}),
                   folder / "removed" / "removed.parquet")
    return curate(box, folder)


def folder_with_removed_hidden_and_notes(box: Sandbox) -> list[str]:
    """A plain folder: removed/ is data like any subfolder; hidden and .md files are not."""
    write(box.inp / "a.jsonl", jsonl(records(2)))
    write(box.inp / "removed" / "b.jsonl", jsonl([{"id": "r1", "text": DOCS[3]}]))
    write(box.inp / ".out.tmp-abc" / "c.jsonl", jsonl([{"id": "h1", "text": "hidden"}]))
    write(box.inp / ".hidden.jsonl", jsonl([{"id": "h2", "text": "hidden too"}]))
    write(box.inp / "README.md", "# notes, not a document\n")
    return curate(box, box.inp)


def input_rows(n: int) -> Callable[[Sandbox, str], None]:
    def check(box: Sandbox, _: str) -> None:
        manifest = json.loads((box.out / MANIFEST_FILE).read_text())
        assert manifest["input"]["rows"] == n, manifest["input"]
    return check


def first_text_has_no_bom(box: Sandbox, _: str) -> None:
    table = pq.read_table(next(box.out.glob("*.parquet")))
    assert not table.column("text")[0].as_py().startswith("\ufeff")


def skipped(n: int, line: int) -> Callable[[Sandbox, str], None]:
    def check(box: Sandbox, _: str) -> None:
        info = json.loads((box.out / MANIFEST_FILE).read_text())["input"]["skipped"]
        assert info["count"] == n and f":{line}:" in info["examples"][0], info
    return check


def renamed(n: int) -> Callable[[Sandbox, str], None]:
    def check(box: Sandbox, _: str) -> None:
        manifest = json.loads((box.out / MANIFEST_FILE).read_text())
        assert manifest["input"]["renamed_ids"] == n
        ids = pq.read_table(next(box.out.glob("*.parquet"))).column("id").to_pylist()
        assert "a-2" in ids and len(set(ids)) == len(ids)
    return check


def missing_path(path: str) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        (box.root / "data").mkdir(exist_ok=True)
        return ["curate", path, "--spec", spec(box), "--out", str(box.out), "--quiet"]
    return setup


def train_missing_data(box: Sandbox) -> list[str]:
    (box.root / "data").mkdir(exist_ok=True)
    return ["train", "--data", "data/nope.jsonl", "--out", str(box.out)]


def train_out_is_data(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return ["train", "--data", str(box.inp), "--out", str(box.inp / "run")]


# -- spec and argument errors ----------------------------------------------------------------


def with_spec(text: str | bytes, *extra: str) -> Callable[[Sandbox], list[str]]:
    def setup(box: Sandbox) -> list[str]:
        write(box.inp / "a.jsonl", jsonl(records()))
        path = write(box.root / "spec.yaml", text)
        return ["curate", str(box.inp / "a.jsonl"), "--spec", str(path), "--out", str(box.out),
                "--quiet", *extra]
    return setup


def missing_spec(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return ["curate", str(box.inp / "a.jsonl"), "--spec", str(box.root / "nope.yaml"),
            "--out", str(box.out)]


def out_under_a_file(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    blocker = write(box.out_parent / "afile", "x")
    return ["curate", str(box.inp / "a.jsonl"), "--spec", spec(box), "--out",
            str(blocker / "out"), "--quiet"]


def dsir_missing_target(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return curate(box, box.inp / "a.jsonl",
                  spec_text="- exact_dedup: {}\n- dsir: {target: target/nope.txt, keep: 2}\n")


def keep_missing_field(box: Sandbox) -> list[str]:
    return curate(box, write(box.inp / "a.jsonl", jsonl(records())), "--keep-fields", "lang")


def why_missing(box: Sandbox) -> list[str]:
    return ["why", str(box.root / "nope"), "x"]


def why_not_curated(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return ["why", str(box.inp), "x"]


def why_answers(box: Sandbox) -> list[str]:
    folder = box.inp / "curated"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["kept1"], "text": [DOCS[0]]}),
                   folder / "data-00000-of-00001.parquet")
    write(folder / "manifest.json", json.dumps({"input": {"id_field": "id"}, "spec": [],
                                                "output": {"shards": ["data-00000-of-00001.parquet"],
                                                           "removed_file": "removed/removed.parquet"}}))
    (folder / "removed").mkdir()
    pq.write_table(pa.table({"id": ["gone"], "input_row": [1], "step": ["exact_dedup"],
                             "reason": ["exact-duplicate-of:kept1"]}), folder / "removed" / "removed.parquet")
    return ["why", str(folder), "kept1", "gone", "typo"]


def why_lines(box: Sandbox, stdout: str) -> None:
    assert "kept1: kept" in stdout
    assert "gone: removed by exact_dedup (exact-duplicate-of:kept1)" in stdout
    assert "typo: unknown id" in stdout


TRAIN_CONFIG = """\
tokenizer: bytes
model: tiny
seq_len: 32
batch_size: 2
max_steps: 2
warmup_steps: 0
eval_fraction: 0.0
checkpoint_every: 0
num_threads: 1
device: cpu
"""


class Planted:
    """Pickles as a call that creates a file: what a crafted checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def train_run(checkpoint: str, *extra: str) -> Callable[[Sandbox], list[str]]:
    """``train`` into a run folder that already holds a crafted or corrupt checkpoint."""
    def setup(box: Sandbox) -> list[str]:
        import torch

        write(box.inp / "a.jsonl", jsonl(records(12)))
        config = write(box.root / "train.yaml", TRAIN_CONFIG)
        box.out.mkdir()
        if checkpoint == "planted":
            torch.save({"model": {}, "step": Planted(box.root / "PWNED")}, box.out / "checkpoint.pt")
        else:
            write(box.out / "checkpoint.pt", b"PK\x03\x04 not really a zip" * 10)
        return ["train", "--data", str(box.inp / "a.jsonl"), "--config", str(config),
                "--out", str(box.out), "--quiet", *extra]
    return setup


def nothing_ran(box: Sandbox, _: str) -> None:
    assert not (box.root / "PWNED").exists(), "the checkpoint's pickled code ran"


def fresh_run_written(box: Sandbox, stdout: str) -> None:
    nothing_ran(box, stdout)
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "completed"
    assert (box.out / "model" / "model.safetensors").is_file()
    assert_modes_follow_umask(box.out, root=False)  # the run folder itself was the test's


def compress(*args: str) -> Callable[[Sandbox], list[str]]:
    return lambda box: ["compress", *args]


def generate(*args: str) -> Callable[[Sandbox], list[str]]:
    return lambda box: ["generate", "--prompt", "hi", *args]


def internal_error(box: Sandbox) -> list[str]:
    write(box.inp / "a.jsonl", jsonl(records()))
    return curate(box, box.inp / "a.jsonl")


INTERNAL_ERROR = (
    "import sys\n"
    "from datadiet.selectors.exact import ExactDedup\n"
    "def broken(self, texts):\n"
    "    raise ValueError('an internal bug, not the user')\n"
    "ExactDedup.row_features = broken\n"
    "from datadiet.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


ROWS = [
    # security and data loss
    Row("out-equals-input-overwrite", out_is_input_folder, 2, r"holds the input"),
    Row("out-inside-input", out_inside_input, 2, r"is inside the input folder"),
    Row("out-holds-input-file", out_holds_input_file, 2, r"holds the input .*a\.jsonl"),
    Row("out-holds-dsir-target", out_holds_dsir_target, 2, r"holds the input .*target\.txt",
        output="kept"),
    Row("overwrite-refuses-user-folder", overwrite_user_folder, 2,
        r"not written by datadiet \(no \.datadiet/manifest\.json\)", output="kept"),
    Row("exists-without-overwrite", exists_without_overwrite, 2, r"output exists", output="kept"),
    Row("overwrite-own-output", overwrite_own_output, 0, output="written"),
    Row("success-modes-and-no-temp", plain_success, 0, output="written", check=input_rows(6)),
    Row("sigterm-during-write", signal_run, 143, r"terminated; no output was written",
        program=lambda: signal_self_code("write", signal.SIGTERM)),
    Row("sigint-during-write", signal_run, 130, r"interrupted",
        program=lambda: signal_self_code("write", signal.SIGINT)),
    Row("sigterm-during-map", signal_run, 143, r"terminated; no output was written",
        program=lambda: signal_self_code("map", signal.SIGTERM)),
    Row("sigint-during-map", signal_run, 130,
        program=lambda: signal_self_code("map", signal.SIGINT)),
    Row("sigterm-during-step", signal_run, 143, r"terminated; no output was written",
        program=lambda: signal_self_code("step", signal.SIGTERM)),
    Row("sigint-during-step", signal_run, 130,
        program=lambda: signal_self_code("step", signal.SIGINT)),
    # bad input, named with file:line
    Row("truncated-gzip", file_row("x.jsonl.gz", TRUNCATED_GZ), 2,
        r"x\.jsonl\.gz:\d+: the gzip data ends early"),
    Row("fake-gzip", file_row("x.jsonl.gz", GOOD), 2, r"x\.jsonl\.gz:1: not gzip data"),
    Row("lone-surrogate", file_row("x.jsonl", SURROGATE), 2,
        r"x\.jsonl:4: field 'text' holds a lone surrogate"),
    Row("lone-surrogate-skip", file_row("x.jsonl", SURROGATE, "--on-error", "skip"), 0,
        output="written", check=skipped(1, 4)),
    Row("deeply-nested", file_row("x.jsonl", DEEP), 2, r"x\.jsonl:4: JSON nested too deeply"),
    Row("deeply-nested-skip", file_row("x.jsonl", DEEP, "--on-error", "skip"), 0,
        output="written", check=skipped(1, 4)),
    Row("bom-stripped", file_row("x.jsonl", BOM), 0, output="written", check=first_text_has_no_bom),
    Row("json-array-file", file_row("x.json", ARRAY), 2, r"x\.json:1: a JSON array, not JSON Lines"),
    Row("malformed-json", file_row("x.jsonl", GOOD + b'{"text": oops}\n'), 2,
        r"x\.jsonl:4: malformed JSON"),
    Row("text-not-a-string", file_row("x.jsonl", b'{"text": 3}\n'), 2, r"x\.jsonl:1: field 'text' is int"),
    Row("invalid-utf8", file_row("x.jsonl", GOOD + b'{"text": "bad \xff"}\n'), 2,
        r"x\.jsonl:4: invalid UTF-8"),
    Row("empty-file", file_row("x.jsonl", b""), 2, r"x\.jsonl: empty file"),
    Row("only-blank-lines", file_row("x.jsonl", b"\n\n  \n"), 2, r"x\.jsonl: no records"),
    Row("parquet-int-text", parquet_row(pa.table({"text": [1, 2]})), 2,
        r"p\.parquet: column 'text' is int64, not a string"),
    Row("parquet-null-text", parquet_row(pa.table({"text": ["a", None]})), 2,
        r"p\.parquet row 2: field 'text' is null"),
    Row("curated-output-as-input", curated_output_as_input, 0, output="written",
        check=input_rows(2)),
    Row("removed-hidden-and-notes", folder_with_removed_hidden_and_notes, 0, output="written",
        check=input_rows(3)),
    Row("repeated-source-id", file_row("x.jsonl", REPEATED_ID), 2,
        r"x\.jsonl:3: repeated id 'a', first at .*x\.jsonl:1"),
    Row("repeated-source-id-rename", file_row("x.jsonl", REPEATED_ID, "--on-duplicate-id", "rename"),
        0, output="written", check=renamed(1)),
    Row("missing-relative-path", missing_path("data/nope.jsonl"), 2,
        r"data/nope\.jsonl: no such file or folder"),
    Row("missing-dotted-path", missing_path("./nope"), 2, r"\./nope: no such file or folder"),
    Row("missing-hub-like-path-with-extension", missing_path("org/nope.parquet"), 2,
        r"org/nope\.parquet: no such file or folder"),
    Row("train-missing-data", train_missing_data, 2, r"data/nope\.jsonl: no such file or folder"),
    Row("train-out-inside-data", train_out_is_data, 2, r"is inside the input folder"),
    # spec and arguments: checked before any work
    Row("missing-spec", missing_spec, 2, r"nope\.yaml: no such spec file"),
    Row("spec-not-utf8", with_spec(b"- exact_dedup: {}\n# caf\xe9\n"), 2,
        r"spec\.yaml:2: the spec is not UTF-8"),
    Row("spec-bad-yaml", with_spec("- exact_dedup: {\n"), 2, r"spec\.yaml:\d+: not valid YAML"),
    Row("seed-not-int", with_spec("- exact_dedup: {}\n- random: {keep: 0.5, seed: abc}\n"), 2,
        r"spec\.yaml: entry 2: parameter 'seed' of step 'random': expected int or null, got 'abc'"),
    Row("keep-wrong-type", with_spec("- random: {keep: lots}\n"), 2,
        r"entry 1: parameter 'keep' of step 'random'"),
    Row("unknown-step", with_spec("- exact_dedupe: {}\n"), 2, r"entry 1: unknown step 'exact_dedupe'"),
    Row("unknown-parameter", with_spec("- minhash_dedup: {thresh: 0.5}\n"), 2,
        r"entry 1: bad parameters for step 'minhash_dedup'"),
    Row("rows-per-shard-zero", with_spec(SPEC, "--rows-per-shard", "0"), 2,
        r"--rows-per-shard: must be at least 1"),
    Row("rows-per-shard-negative", with_spec(SPEC, "--rows-per-shard", "-1"), 2,
        r"--rows-per-shard: must be at least 1"),
    Row("out-under-a-file", out_under_a_file, 2, r"afile is not a folder"),
    Row("dsir-target-missing", dsir_missing_target, 2,
        r"target/nope\.txt: no such DSIR target file or folder"),
    Row("keep-fields-nobody-has", keep_missing_field, 2, r"--keep-fields: no record has the field 'lang'"),
    Row("why-missing-folder", why_missing, 2, r"nope: no such folder"),
    Row("why-not-curated", why_not_curated, 2, r"not a folder written by `datadiet curate`"),
    Row("why-kept-removed-unknown", why_answers, 0, check=why_lines),
    Row("internal-error-keeps-traceback", internal_error, 1,
        r"Traceback .*ValueError: an internal bug", program=lambda: INTERNAL_ERROR),
    # checkpoints: loaded with weights_only=True; a crafted or corrupt one is a clear error
    Row("train-crafted-checkpoint", train_run("planted"), 2,
        r"checkpoint\.pt: not a checkpoint datadiet can resume .*--no-resume", output="kept",
        check=nothing_ran),
    Row("train-corrupt-checkpoint", train_run("corrupt"), 2,
        r"checkpoint\.pt: not a checkpoint datadiet can resume .*--no-resume", output="kept"),
    Row("train-no-resume-starts-afresh", train_run("planted", "--no-resume"), 0, output="run",
        check=fresh_run_written),
    # compress and generate: arguments checked before any model loads
    Row("compress-binary-stdin", compress("--rate", "0.5"), 2, r"stdin:1: not UTF-8 text",
        stdin=b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
    Row("compress-empty-stdin", compress("--rate", "0.5"), 2, r"stdin: empty prompt", stdin=b"  \n"),
    Row("compress-rate-zero", compress("--rate", "0"), 2, r"--rate: must be in \(0, 1\]"),
    Row("compress-rate-above-one", compress("--rate", "1.5"), 2, r"--rate: must be in \(0, 1\]"),
    Row("compress-target-zero", compress("--target-tokens", "0"), 2, r"--target-tokens: must be at least 1"),
    Row("compress-target-negative", compress("--target-tokens", "-3"), 2,
        r"--target-tokens: must be at least 1"),
    Row("compress-missing-input", compress("--rate", "0.5", "--input", "nope.txt"), 2,
        r"nope\.txt: no such file"),
    Row("generate-negative-tokens", generate("--max-new-tokens", "-5"), 2,
        r"--max-new-tokens: must be at least 1"),
    Row("generate-missing-model", generate("--model", "./no-such-model"), 2,
        r"no-such-model: no such model file or folder"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_cli_row(row: Row, box: Sandbox) -> None:
    check_row(row, box)


def check_row(row: Row, box: Sandbox) -> str:
    """Run a row through the CLI and check everything it promises; returns its stderr."""
    args = row.setup(box)
    before, temp_before = box.snapshot(), box.leftovers()
    out_before = sorted(str(p) for p in box.out.rglob("*")) if box.out.exists() else None
    proc = box.run(args, stdin=row.stdin, code=row.program() if row.program else None)
    stderr = proc.stderr.decode("utf-8", "replace")
    stdout = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == row.code, f"exit {proc.returncode}\n{stderr[-3000:]}"
    if row.message:
        assert re.search(row.message, stderr, re.DOTALL), stderr[-3000:]
    if row.code == 2:
        assert "Traceback" not in stderr, stderr[-3000:]
    assert box.snapshot() == before, "the input changed"
    assert box.leftovers() == temp_before, "temp data left behind"
    if row.output == "none":
        assert not box.out.exists(), "an output was written"
    elif row.output == "kept":
        assert sorted(str(p) for p in box.out.rglob("*")) == out_before
    elif row.output == "written":
        assert (box.out / MANIFEST_FILE).is_file()
        assert_modes_follow_umask(box.out)
    if row.check:
        row.check(box, stdout)
    return stderr


def test_the_table_is_big_enough() -> None:
    assert len(ROWS) >= 40


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_is_refused_before_any_work(box: Sandbox) -> None:
    write(box.inp / "a.jsonl", jsonl(records()))
    box.out_parent.chmod(0o555)
    try:
        proc = box.run(curate(box, box.inp / "a.jsonl"))
    finally:
        box.out_parent.chmod(0o755)
    assert proc.returncode == 2
    assert re.search(r"cannot write in .*outputs \(permission denied\)", proc.stderr.decode())
    assert box.leftovers() == set()


def imported_modules(stderr: bytes) -> set[str]:
    """Every module a ``python -X importtime`` run imported, from its stderr."""
    return {line.split("|")[-1].strip() for line in stderr.decode().splitlines()
            if line.startswith("import time:")}


def test_curate_imports_no_torch_or_transformers(box: Sandbox) -> None:
    """A run whose steps need no model starts without torch (seconds of start-up saved)."""
    args = curate(box, write(box.inp / "a.jsonl", jsonl(records())),
                  spec_text="- exact_dedup: {}\n- minhash_dedup: {}\n- quality: {}\n")
    proc = box.run(["-X", "importtime", "-m", "datadiet", *args], code=None, raw=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert not imported_modules(proc.stderr) & {"torch", "transformers"}, \
        "a model library was imported"


def test_small_curate_starts_lean(box: Sandbox) -> None:
    """The fixed cost of ``datadiet curate`` on a small file: besides no model library, no
    other command's parser (pydantic, Prefect) and no numba (below ``KERNEL_MIN_ROWS`` texts the
    NumPy paths finish before numba, its LLVM and ``scipy.linalg`` would have loaded)."""
    args = curate(box, write(box.inp / "a.jsonl", jsonl(records(50))),
                  spec_text="- exact_dedup: {}\n- minhash_dedup: {}\n- quality: {}\n")
    proc = box.run(["-X", "importtime", "-m", "datadiet", *args], raw=True,
                   unset_env=("DATADIET_NUMBA",))
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    heavy = {"torch", "transformers", "prefect", "pydantic", "numba", "llvmlite", "scipy",
             "sklearn"}
    assert not imported_modules(proc.stderr) & heavy
    steps = json.loads((box.out / MANIFEST_FILE).read_text())["steps"]
    assert [s["name"] for s in steps] == ["exact_dedup", "minhash_dedup", "quality"]
    assert steps[0]["rows_in"] == 50
