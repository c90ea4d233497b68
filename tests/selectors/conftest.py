"""Fixtures of the selector tests: switching the C hashing kernels off for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from datadiet.selectors import native


@pytest.fixture
def without_c(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine without the C library (a plain ``pip install``, no compiler): every hashing
    call in the test takes the NumPy fallback. The library is loaded again afterwards."""
    monkeypatch.setenv("DATADIET_NATIVE", "0")
    native._library.cache_clear()
    native.unicode_tables.cache_clear()
    native.nfkc_tables.cache_clear()
    assert not native.available()
    yield
    monkeypatch.undo()
    native._library.cache_clear()
    native.unicode_tables.cache_clear()
    native.nfkc_tables.cache_clear()
