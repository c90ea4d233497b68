"""The flows' shared rules: cache keys from small plain inputs only, retries only on I/O errors
that may pass, spec hashes independent of key order; the package gives the flows by name, each
flow's checks cover exactly its parameters, and run names and table cells read as they should."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from prefect.states import Completed, Failed

from datadiet.flows.common import (
    retry_transient_io,
    short,
    small_inputs_key,
    stable_hash,
    task_run_namer,
)
from datadiet.flows.curation import normalised_spec
from datadiet.flows.report import table_value
from datadiet.flows.serve import flows

SRC = Path(__file__).resolve().parents[2] / "src"


def failed_with(exc: BaseException):  # noqa: ANN201 - a Prefect State
    return Failed(data=exc)


def test_only_transient_io_errors_are_retried() -> None:
    assert retry_transient_io(None, None, failed_with(OSError(5, "Input/output error")))
    assert retry_transient_io(None, None, failed_with(TimeoutError("slow disk")))
    for permanent in (FileNotFoundError("no such file"), FileExistsError("output exists"),
                      PermissionError("read-only"), ValueError("bad spec"), KeyError("bug")):
        assert not retry_transient_io(None, None, failed_with(permanent)), permanent
    assert not retry_transient_io(None, None, Completed())


def test_cache_key_depends_on_inputs_and_refuses_big_objects() -> None:
    context = SimpleNamespace(task=SimpleNamespace(name="curate_corpus"))
    key = small_inputs_key(context, {"fingerprint": "abc", "spec": [{"quality": {}}]})
    assert key == small_inputs_key(context, {"spec": [{"quality": {}}], "fingerprint": "abc"})
    assert key != small_inputs_key(context, {"fingerprint": "abd", "spec": [{"quality": {}}]})
    with pytest.raises(TypeError, match="pass paths and fingerprints"):
        small_inputs_key(context, {"rows": np.zeros(3)})


def test_spec_hash_sees_filled_in_defaults() -> None:
    implicit = normalised_spec("- exact_dedup: {}\n- quality: {}\n")
    explicit = normalised_spec("- exact_dedup: {normalize: true}\n- quality: {min_words: 50}\n")
    assert stable_hash(implicit) == stable_hash(explicit)
    assert stable_hash(implicit) != stable_hash(normalised_spec("- quality: {}\n- exact_dedup: {}\n"))


def test_the_package_gives_the_flows_whatever_was_imported_first() -> None:
    """`from datadiet.flows import curate` once bound the submodule of that name when another
    module had imported it first ('module' object is not callable)."""
    probe = ("import datadiet.flows.chain, datadiet.flows.demo\n"
             "from datadiet.flows import curate, efficiency, build_prompts, train_and_measure\n"
             "print(*(type(f).__name__ + ':' + f.name for f in "
             "(curate, efficiency, build_prompts, train_and_measure)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.split() == ["Flow:datadiet-curate", "Flow:datadiet-efficiency",
                                  "Flow:datadiet-build-prompts",
                                  "Flow:datadiet-train-and-measure"], run.stderr[-2000:]


def test_each_flows_checks_cover_exactly_its_flat_parameters() -> None:
    for name, (flow_obj, model) in flows().items():
        signature = inspect.signature(flow_obj.fn).parameters
        assert list(model.model_fields) != ["params"], name
        assert set(signature) == set(model.model_fields), name
        for parameter in signature.values():  # the UI's form: every field typed
            assert parameter.annotation is not inspect.Parameter.empty, (name, parameter)


def test_run_names_show_paths_by_their_last_part() -> None:
    name = task_run_namer("curate {source} → {out}/")
    assert name(parameters={"source": "/data/in/corpus.jsonl", "out": "/tmp/x/curated/"}) == (
        "curate corpus.jsonl → curated/")
    assert short("bytes") == "bytes" and short(3) == "3"


def test_table_cells_stay_numbers() -> None:
    assert [table_value(v) for v in (421, 0.25, None, np.int64(7), np.float32(0.5))] == [
        421, 0.25, None, 7, 0.5]
    assert table_value(float("nan")) == "nan" and table_value("rows") == "rows"
