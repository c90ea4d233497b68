"""Selection composition, the FLOP formula and the ledger's tree of stages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from datadiet.pipeline import ledger as ledger_module
from datadiet.pipeline.ledger import MODEL_LOADING, Ledger, ModelShape
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


class _Clock:
    """A clock the test moves by hand, so stage times are exact rather than slept."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(ledger_module, "time", fake)
    return fake


def test_nested_stages_form_a_tree_and_totals_never_double_count(clock: _Clock) -> None:
    led = Ledger()
    with led.stage("step:perplexity", measure_memory=False) as step:
        with led.stage("lm-scoring", measure_memory=False) as inner:
            clock.now += 0.3
            with led.stage("lm-scoring") as again:  # the scorer re-opening its caller's stage
                assert again is inner
            led.add("lm-scoring", tokens=40, flops=4e9)  # books on the open stage
    assert inner.name == "step:perplexity/lm-scoring" and inner.parent == "step:perplexity"
    assert step.seconds == inner.seconds == pytest.approx(0.3)
    assert inner.tokens == 40 and step.tokens == 0
    total = led.total
    assert total.seconds == pytest.approx(0.3)  # not 0.6
    assert total.tokens == 40 and total.flops == 4e9
    assert [r.name for r in led.children()] == ["step:perplexity"]
    assert [r.name for r in led.children("step:perplexity")] == ["step:perplexity/lm-scoring"]


def test_model_loading_is_its_own_stage_not_the_first_steps(clock: _Clock) -> None:
    led = Ledger()
    with led.stage("step:perplexity", measure_memory=False) as step:
        clock.now += 0.1
        with led.stage("model-loading", measure_memory=False, at_root=True) as loading:
            clock.now += 2.0
        with led.stage("lm-scoring", measure_memory=False):
            clock.now += 0.5
    assert loading.name == "model-loading" and loading.parent is None
    assert loading.seconds == pytest.approx(2.0)
    assert step.seconds == pytest.approx(0.6)
    assert led.stages["step:perplexity/lm-scoring"].seconds == pytest.approx(0.5)
    assert led.total.seconds == pytest.approx(2.6)


def test_a_snapshot_taken_inside_a_stage_keeps_its_time(clock: _Clock) -> None:
    """What a training checkpoint saves mid-stage; the resumed run adds to it."""
    led = Ledger("run")
    with led.stage("train", measure_memory=False) as rec:
        clock.now += 1.5
        rec.add(tokens=5120)
        saved = led.to_dict()
        clock.now += 0.5
    assert {s["name"]: s for s in saved["stages"]}["train"]["seconds"] == pytest.approx(1.5)
    assert saved["total"]["seconds"] == pytest.approx(1.5)
    resumed = Ledger.from_dict(saved)
    with resumed.stage("train", measure_memory=False) as rec:
        clock.now += 1.0
        rec.add(tokens=5120)
    assert resumed.stages["train"].seconds == pytest.approx(2.5)
    assert resumed.total.tokens == 10240
    assert led.stages["train"].seconds == pytest.approx(2.0)


def test_a_ledger_without_model_stages_never_imports_torch(tmp_path) -> None:
    """A curate run of CPU-only steps: the memory sampler must not pull in torch."""
    script = (
        "import sys\n"
        "from datasets import Dataset\n"
        "from datadiet.pipeline.curate import curate\n"
        "ds = Dataset.from_dict({'text': ['a b c', 'a b c', 'd e f']})\n"
        "res = curate(ds, ['exact_dedup'], show_progress=False)\n"
        "assert res.manifest.ledger['stages'][0]['peak_memory_bytes'] > 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_absorb_books_a_map_ledger_under_the_open_step() -> None:
    """What a map spent on a worker (its own ledger) lands under the step that ran it, model
    loading stays top-level, and the totals count every token once."""
    worker = Ledger()
    with worker.stage(MODEL_LOADING, at_root=True) as loading:
        loading.add(0, 0.0)
    with worker.stage("lm-scoring"):
        worker.add("lm-scoring", tokens=120, flops=5e9)
    run = Ledger()
    with run.stage("step:perplexity"):
        run.absorb(worker)
        run.absorb(worker)  # a second partition's map
    stages = {s.name: s for s in run.stages.values()}
    assert stages["step:perplexity/lm-scoring"].tokens == 240
    assert stages["step:perplexity/lm-scoring"].flops == 1e10
    assert "model-loading" in stages and "step:perplexity/model-loading" not in stages
    assert run.total.tokens == 240
    assert worker.loading_seconds() == stages["model-loading"].seconds / 2
