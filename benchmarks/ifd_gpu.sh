#!/bin/bash
# benchmarks/ifd.py on a GPU machine that has torch/transformers but no network and no datasets.
#
#   bash benchmarks/ifd_gpu.sh prepare   # here: fills .gpu_sft/ (git-ignored, ~8 MB)
#   bash benchmarks/ifd_gpu.sh run       # there, with .gpu_sft carried; results in $OUT
#
# SmolLM2-135M's architecture runs with random weights (the real weights are larger than what
# can be carried); the speed does not depend on the weights, the IFD values do.
set -e
case "$1" in
prepare)
    mkdir -p .gpu_sft/wheels .gpu_sft/data/sft/t0_train .gpu_sft/model
    python -m pip download -q datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 --no-deps \
        --python-version 3.12 --only-binary=:all: -d .gpu_sft/wheels
    model=$(python -c "from datadiet.pipeline.models.loading import resolve_causal_lm; print(resolve_causal_lm(None))")
    for f in config.json tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json; do
        cp "$model/$f" .gpu_sft/model/
    done
    python - <<'PY'
import glob, os, random
data = os.environ.get("DATADIET_SHARED_DATA", "../shared/data")
pool = []
for name in sorted(glob.glob(f"{data}/sft/t0_train/*.jsonl")):
    pool += [line for line in open(name, encoding="utf-8") if line.strip()]
random.Random(0).shuffle(pool)
open(".gpu_sft/data/sft/t0_train/sample.jsonl", "w", encoding="utf-8").writelines(pool[:3000])
PY
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_sft/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src DATADIET_SHARED_DATA=$PWD/.gpu_sft/data HF_HUB_OFFLINE=1
    export DATADIET_CACHE=/tmp/ddcache PYTHONUNBUFFERED=1 DATADIET_LM=/tmp/smol
    python3 - <<'PY'
import shutil, torch
from transformers import AutoConfig, LlamaForCausalLM
torch.manual_seed(0)
LlamaForCausalLM(AutoConfig.from_pretrained(".gpu_sft/model")).save_pretrained("/tmp/smol")
for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]:
    shutil.copy(".gpu_sft/model/" + f, "/tmp/smol/")
PY
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    timeout 200 python3 benchmarks/ifd.py --rows 512 --repeat 2 | tail -1 | tee "$OUT/ifd_gpu_default.json"
    timeout 200 python3 benchmarks/ifd.py --rows 512 --repeat 2 --tokens-per-batch 65536 \
        | tail -1 | tee "$OUT/ifd_gpu_64k.json"
    ;;
*)
    echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
