"""The flows' shared rules: cache keys from small plain inputs only, retries only on I/O errors
that may pass, spec hashes independent of key order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from prefect.states import Completed, Failed

from datadiet.flows.common import retry_transient_io, small_inputs_key, stable_hash
from datadiet.flows.curate import normalised_spec


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
