"""numba for the quality features (:mod:`datadiet.selectors.jit`): loaded late, only by them.

What must hold: the hashing selectors (exact, MinHash) never import numba, with or without the C
library; numba loads when a quality kernel first runs on a batch big enough to pay for it, not
before; a numba that fails to import means the NumPy/Python paths, not a crash; and the
compiled UTF-8 decoder the quality kernels share decodes every code point.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datadiet.selectors.hashing import utf8_layout
from datadiet.selectors.jit import NUMBA_INSTALLED, nb_decode, numba_enabled


@pytest.mark.skipif(not numba_enabled(), reason="compiled kernels need numba")
def test_compiled_utf8_decoder_reads_every_code_point() -> None:
    text = "".join(chr(c) for c in range(0, 0x110000, 7))
    buf, offsets = utf8_layout([text])
    assert offsets.tolist() == [0, len(buf)]
    i = 0
    decoded = []
    while i < len(buf):
        cp, i = nb_decode(buf, i)
        decoded.append(cp)
    assert decoded == [ord(ch) for ch in text]


LAZY_NUMBA_PROBE = """
import os, sys
from datadiet.selectors import exact, jit, minhash, native, quality
assert "numba" not in sys.modules, "importing the selectors imported numba"
small = ["Hello, World! This is a line.", "hello world", "ß and Straße"] * 10
big = small * (jit.KERNEL_MIN_ROWS // len(small) + 1)
for native_on in ("1", "0"):  # with the C library, and the NumPy fallback without it
    os.environ["DATADIET_NATIVE"] = native_on
    native._library.cache_clear()
    assert native.available() == (native_on == "1")
    exact.text_hashes(big, True)
    shard = minhash.minhash_shard(big, bands=16, rows=8)
    minhash.minhash_clusters(*shard, threshold=0.8)
    assert "numba" not in sys.modules, "a hashing selector loaded numba"
assert not jit.numba_enabled(len(small))
plain = quality.quality_feature_matrix(small)
assert "numba" not in sys.modules, "a small batch loaded numba"
compiled = quality.quality_feature_matrix(big)
assert "numba" in sys.modules
assert jit.numba_enabled(jit.KERNEL_MIN_ROWS)
assert (compiled[: len(small)] == plain).all()
assert jit.numba_enabled(1), "once loaded, small batches use the kernels too"
assert type(quality._nb_quality).__name__ == "CPUDispatcher"  # names rebound, no wrapper left
assert quality.prange is sys.modules["numba"].prange
print("ok")
"""


@pytest.mark.skipif(not NUMBA_INSTALLED, reason="compiled kernels need numba")
def test_numba_loads_on_the_first_big_quality_call_only() -> None:
    """numba's import and first kernel load (~1 CPU-s, ~100 MiB) happen when a quality kernel
    first runs on a batch big enough to pay for it, never for hashing; then the kernel module's
    names are the compiled dispatchers, and the compiled path agrees with the Python one."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATADIET_NUMBA", "DATADIET_NATIVE")}
    out = subprocess.run([sys.executable, "-c", LAZY_NUMBA_PROBE], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


BROKEN_NUMBA_PROBE = """
import numpy as np
from datadiet.selectors import hashing, jit, quality
texts = ["Hello, World!", "ß and Straße"] * (jit.KERNEL_MIN_ROWS // 2)
assert jit.NUMBA_INSTALLED
assert not jit.numba_enabled(len(texts)) and jit._numba_broken
assert quality.quality_feature_matrix(texts).shape[0] == len(texts)
assert jit.nb_fmix64(np.uint64(1)) == hashing.fmix64(np.array([1], np.uint64))[0]
print("ok")
"""


def test_a_numba_that_fails_to_import_means_the_python_paths(tmp_path) -> None:
    """numba is found on disk but its import fails (as when it was built for another NumPy):
    the quality step takes its Python path and a kernel called directly runs as Python, instead
    of the run stopping with an ImportError."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less")\n')
    env = {k: v for k, v in os.environ.items() if k != "DATADIET_NUMBA"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, "-c", BROKEN_NUMBA_PROBE], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
