"""Selection composition and the FLOP formula."""

from __future__ import annotations

import numpy as np
import pytest

from datadiet.pipeline.ledger import Ledger, ModelShape
from datadiet.pipeline.selection import Selection


def test_removed_row_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="row 1 is removed without a reason"):
        Selection(3, np.array([True, False, True]), np.array(["", "", ""], dtype=object))


def test_then_composes_back_to_input_rows() -> None:
    outer = Selection.from_mask(np.array([True, False, True, True]), "a")
    inner = Selection.from_mask(np.array([False, True, True]), "b",
                                detail=np.array(["x", "", ""], dtype=object))
    both = outer.then(inner)
    assert both.keep.tolist() == [False, False, True, True]
    assert [both.reason(i) for i in range(4)] == ["b:x", "a", "", ""]
    assert both.removed_by_kind() == {"a": 1, "b": 1}


def test_smollm2_shape_and_flops_match_hand_count() -> None:
    shape = ModelShape(n_layers=30, d_model=576, n_heads=9, n_kv_heads=3, d_ff=1536,
                       vocab_size=49152)
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    n = 30 * per_layer + 576 * 49152
    assert shape.matmul_params == n
    assert shape.flops_per_token(1024, training=True) == 6 * n + 12 * 30 * 576 * 1024
    assert shape.flops(10, 100, training=False) == 10 * (2 * n + 4 * 30 * 576 * 100)


def test_ledger_stages_accumulate_and_compare() -> None:
    full, small = Ledger("full"), Ledger("curated")
    with full.stage("train") as rec:
        rec.add(tokens=1000, flops=6e9)
    full.add("train", tokens=1000, flops=6e9)
    small.add("train", tokens=500, flops=3e9)
    assert full.total.tokens == 2000 and full.stages["train"].seconds >= 0
    assert full.stages["train"].peak_memory_bytes > 0
    cmp = full.compare(small)
    assert cmp["tokens"] == [2000, 500, 4.0]
    assert cmp["flops"][2] == pytest.approx(4.0)
    assert Ledger.from_dict(full.to_dict()).total.flops == full.total.flops
