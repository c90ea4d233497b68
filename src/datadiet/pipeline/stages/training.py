"""Training stage: tokenize and pack a (curated) corpus, train datadiet's Llama, count the compute.

The product question this answers is "how many FLOPs does it take to reach eval loss L on the
curated data versus the full data?". So every run writes a JSON report with its ledger
(tokens, analytic FLOPs, seconds, peak memory), its loss curve and ``flops_at_eval_loss``: the
cumulative training FLOPs at which each periodic eval loss was reached. Two reports then compare
with :func:`flops_to_reach`.

Reproducibility is designed in rather than bolted on:

* the data order is a pure function of ``(seed, step)`` — sample ``p`` of the global stream is
  ``perm_epoch[p mod n]`` with a seeded permutation per epoch — so a resumed run sees exactly
  the batches the uninterrupted one would, with no sampler state to save, and one process with
  batch ``B·k`` sees the same samples per step as ``k`` DDP ranks with batch ``B``;
* checkpoints hold model, optimizer, step, curves and ledger, are written to a temporary file
  and renamed (a crash never leaves half a checkpoint), and the LR schedule is a function of
  the step, so a resumed run continues the same loss curve.

Scaling: with ``WORLD_SIZE > 1`` (``torchrun``) the model is wrapped in DDP (gloo on CPU, NCCL on
CUDA); each rank takes its slice of every global batch; rank 0 writes checkpoints and reports.
On CUDA, ``dtype: auto`` trains under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from datadiet.kernels.flops import ModelShape
from datadiet.kernels.hf_checkpoint import write_llama_files
from datadiet.kernels.model import Llama, LlamaConfig
from datadiet.pipeline.config_files import read_config_file
from datadiet.pipeline.io import (
    DataError,
    UserError,
    atomic_path,
    atomic_write_json,
    load_corpus,
)
from datadiet.pipeline.ledger import Ledger
from datadiet.pipeline.models.loading import load_llama
from datadiet.pipeline.models.tokenizer import load_tokenizer, tokenizer_hash
from datadiet.pipeline.tokens import is_token_export, read_token_file

__all__ = [
    "DEFAULT_CONFIG",
    "PackedData",
    "TrainConfig",
    "flops_to_reach",
    "load_text_dataset",
    "lr_at",
    "pack_dataset",
    "pack_pairs",
    "train",
]

CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"
#: The built-in training config, a commented YAML file shipped with the package.
DEFAULT_CONFIG = Path(__file__).with_name("configs") / "train_tiny.yaml"
#: Target id that is not scored (the loss's ``ignore_index``).
IGNORE_INDEX = -100


# -- data --------------------------------------------------------------------------------------


def load_text_dataset(data: Any, text_column: str = "text") -> Any:
    """A ``datasets.Dataset`` with a text column from a Dataset, a curated output folder
    (its data shards only), or any file/folder ``load_corpus`` reads (JSONL, Parquet, text).

    Everything goes through the package's one reader, so training data gets the same checks
    (file:line errors, string texts, "no such file" for a mistyped path) as curation.
    """
    return load_corpus(data, text_field=text_column).dataset


@dataclass
class PackedData:
    """Token blocks of ``seq_len + 1`` ids (inputs and shifted targets share one block).

    ``targets`` (``[n_blocks, seq_len]``), when set, are the ids to predict at each position
    with :data:`IGNORE_INDEX` where nothing is scored (see :func:`pack_pairs`).
    """

    blocks: Tensor  # [n_blocks, seq_len + 1], int64
    n_tokens: int
    n_documents: int
    targets: Tensor | None = None

    def __len__(self) -> int:
        return int(self.blocks.shape[0])


def pack_dataset(
    ds: Any,
    tokenizer: Any,
    seq_len: int,
    *,
    text_column: str = "text",
    eos_id: int | None = None,
    num_proc: int | None = None,
) -> PackedData:
    """Tokenize every row, join them with an end-of-text token, cut into fixed-length blocks.

    Blocks overlap by one token (block ``i`` is ``tokens[i·S : i·S + S + 1]``), so every token
    is a target exactly once and no document boundary is wasted. The tail shorter than a block is
    dropped. Tokenizing goes through ``Dataset.map`` so large file-backed corpora are processed
    in batches (and cached by fingerprint) instead of as one Python list.
    """
    import pyarrow as pa

    eos = eos_id if eos_id is not None else getattr(tokenizer, "eos_token_id", None)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [t or "" for t in batch[text_column]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids = [[*x, eos] for x in ids]
        return {"ids": ids}

    tokenized = ds.map(
        tokenize, batched=True, batch_size=1000, remove_columns=ds.column_names,
        num_proc=num_proc, desc="tokenizing", load_from_cache_file=True,
    )
    column = tokenized.data.column("ids")
    chunks = [c.flatten() for c in column.chunks] if column.num_chunks else []
    flat = pa.concat_arrays(chunks).to_numpy() if chunks else np.zeros(0, dtype=np.int64)
    return pack_tokens(flat, seq_len, len(ds))


def pack_tokens(tokens: np.ndarray, seq_len: int, n_documents: int) -> PackedData:
    """Cut a token stream (documents joined by end-of-text) into overlapping blocks (see
    :func:`pack_dataset`): the same blocks whether the stream was tokenized here or read from
    a file ``datadiet export`` wrote."""
    flat = torch.from_numpy(np.array(tokens, dtype=np.int64))  # a writable int64 copy
    n_blocks = (len(flat) - 1) // seq_len if len(flat) > 1 else 0
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(flat)} tokens: too few for one block of {seq_len + 1}")
    idx = torch.arange(n_blocks)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return PackedData(flat[idx], int(len(flat)), n_documents)


def pack_token_file(path: str | os.PathLike, tokenizer: Any, seq_len: int) -> PackedData:
    """The blocks of a token file written by ``datadiet export`` (the bytes a user's Megatron
    or nanoGPT job reads), refused if another tokenizer made it."""
    tokens = read_token_file(path)
    ours = tokenizer_hash(tokenizer)
    if tokens.tokenizer_hash != ours:
        raise DataError(f"{path}: its tokens were made by the tokenizer {tokens.tokenizer} "
                        f"({tokens.tokenizer_hash}), not by this run's ({ours}); export again "
                        f"with this tokenizer or set `tokenizer:` in the training config")
    return pack_tokens(tokens.tokens, seq_len, tokens.documents)


def pack_data(data: Any, tokenizer: Any, cfg: TrainConfig) -> PackedData:
    """Training or eval data as blocks: a token file as it is, anything else tokenized."""
    if isinstance(data, str | os.PathLike) and is_token_export(data):
        return pack_token_file(data, tokenizer, cfg.seq_len)
    return pack_dataset(load_text_dataset(data, cfg.text_column), tokenizer, cfg.seq_len,
                        text_column=cfg.text_column)


def pack_pairs(
    prompts: list[str],
    responses: list[str],
    tokenizer: Any,
    seq_len: int,
    *,
    eos_id: int | None = None,
) -> PackedData:
    """One block per (prompt, response) pair whose targets score only the response.

    Why: "eval loss on held-out responses" is the loss of the answer given its instruction;
    packing the pair as plain text would mostly score the prompt. Each block is the prompt's
    tail and the response plus an end-of-text token, padded with end-of-text; targets are
    :data:`IGNORE_INDEX` on the prompt and the padding. A response longer than the block keeps
    its head and at least one prompt token before it.
    """
    eos = eos_id if eos_id is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("pack_pairs needs an end-of-text id (the tokenizer has none)")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    blocks = torch.full((len(prompts), seq_len + 1), eos, dtype=torch.long)
    targets = torch.full((len(prompts), seq_len), IGNORE_INDEX, dtype=torch.long)
    scored = 0
    for row, (p_ids, r_ids) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        answer = [*r_ids, eos][:seq_len]
        context = list(p_ids)[-(seq_len + 1 - len(answer)):] or [eos]
        ids = (context + answer)[: seq_len + 1]
        blocks[row, : len(ids)] = torch.tensor(ids)
        start = len(context) - 1  # position whose next token is the answer's first
        targets[row, start : len(ids) - 1] = torch.tensor(ids[start + 1 :])
        scored += len(ids) - 1 - start
    return PackedData(blocks, scored, len(prompts), targets)


# -- configuration -------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """Everything a training run needs; readable from YAML (:meth:`from_yaml`).

    The model is a preset (``tiny``, ``small``, ``smollm2-135m``) with ``model_overrides``, or
    ``init_from`` a Hugging Face Llama checkpoint to fine-tune (``"default"`` = SmolLM2-135M).
    Budgets: ``max_steps``, or ``max_tokens`` (training tokens, all ranks) which wins if set.
    For comparing runs on different training data, give both the same ``eval_data``: losses on
    different held-out sets do not compare.
    """

    model_config = ConfigDict(extra="forbid")

    data: str | None = None
    text_column: str = "text"
    eval_data: str | None = None
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_eval_blocks: int = Field(64, ge=1)
    tokenizer: str | None = None

    model: str = "tiny"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None

    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(200, ge=1)
    max_tokens: int | None = Field(None, ge=1)

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0.0)

    eval_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    seed: int = 0

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    compile: bool = False
    save_model: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.init_from is None:
            LlamaConfig.preset(self.model)  # raises on an unknown preset
        return self

    @classmethod
    def default(cls, **overrides: Any) -> TrainConfig:
        """The built-in run: the commented YAML shipped with the package
        (:data:`DEFAULT_CONFIG`), with ``overrides`` on top."""
        return cls.from_yaml(DEFAULT_CONFIG, **overrides)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        data = read_config_file(path, "training config", expect=dict)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    def steps_for(self, world_size: int) -> int:
        """Optimizer steps this run takes (``max_tokens`` converted with the global batch)."""
        if self.max_tokens is None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum * world_size * self.seq_len
        return max(1, math.ceil(self.max_tokens / per_step))


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr · min_lr_ratio`` at ``total_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


# -- helpers -----------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    here = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return _Dist(rank, world, local, here)


def _pick_device(pref: str, d: _Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        return torch.device("cuda", d.local_rank)
    return torch.device(pref)


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed: corrupt, foreign, or for another model."""


CHECKPOINT_KEYS = ("model", "optimizer", "step", "loss_curve", "evals", "ledger", "model_config")


def _plain(value: Any) -> Any:
    """Non-tensor checkpoint state as plain JSON data (dicts, lists, numbers, strings).

    Why: a checkpoint is loaded with ``weights_only=True``, which refuses every pickled
    object but tensors and plain containers, so a crafted file in a shared run folder cannot
    run code. Storing nothing else keeps our own checkpoints loadable under that rule.
    """
    return json.loads(json.dumps(value, default=str))


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically: tensors as tensors, everything else as plain data."""
    tensors = {"model", "optimizer"}
    with atomic_path(path) as tmp:
        torch.save({k: v if k in tensors else _plain(v) for k, v in state.items()}, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything odd is a :class:`CheckpointError`.

    A corrupt, truncated or foreign file (or one holding pickled objects) names the path and
    says how to start afresh, rather than running its code or failing with a traceback.
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a checkpoint datadiet can resume (corrupt, or holds more than "
            f"weights and plain data: {reason[:200]}); move it away or pass --no-resume"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a datadiet checkpoint (missing {', '.join(missing)}); "
                              "move it away or pass --no-resume")
    return ckpt


class _Sampler:
    """Maps (step, rank, micro-step) to block indices; a pure function of the seed."""

    def __init__(self, n: int, seed: int, batch: int, accum: int, world: int) -> None:
        self.n, self.seed, self.batch, self.accum, self.world = n, seed, batch, accum, world
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch's perm
        return self._perms[epoch]

    def indices(self, step: int, rank: int, micro: int) -> Tensor:
        global_batch = self.batch * self.accum * self.world
        start = step * global_batch + (rank * self.accum + micro) * self.batch
        pos = torch.arange(start, start + self.batch)
        out = torch.empty(self.batch, dtype=torch.long)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perm(epoch)[pos[sel] % self.n]
        return out

    def epoch_of(self, step: int) -> float:
        return step * self.batch * self.accum * self.world / self.n


def _split_blocks(blocks: Tensor, cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """Hold out a seeded random ``eval_fraction`` of the blocks (capped at ``max_eval_blocks``)."""
    n = blocks.shape[0]
    n_eval = min(cfg.max_eval_blocks, int(round(n * cfg.eval_fraction))) if cfg.eval_fraction else 0
    if n_eval and n - n_eval < 1:
        raise ValueError(f"only {n} blocks: nothing left to train on after the eval split")
    g = torch.Generator().manual_seed(cfg.seed + 7919)
    perm = torch.randperm(n, generator=g)
    return blocks[perm[n_eval:].sort().values], blocks[perm[:n_eval].sort().values]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    blocks: Tensor,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    d: _Dist,
    targets: Tensor | None = None,
) -> tuple[float, int]:
    """Mean next-token loss over ``blocks`` (split across ranks), and tokens evaluated.

    ``targets`` (``[n, seq_len]``, ``-100`` = not scored) replace the blocks' own shifted ids,
    so an eval set can score only some positions (a response after its prompt).
    """
    was_training = model.training
    model.eval()
    mine = blocks[d.rank :: d.world]
    mine_targets = None if targets is None else targets[d.rank :: d.world]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, mine.shape[0], batch_size):
        b = mine[i : i + batch_size].to(device)
        t = b[:, 1:] if mine_targets is None else mine_targets[i : i + batch_size].to(device)
        n = int((t != IGNORE_INDEX).sum())
        if not n:
            continue
        with autocast():
            loss = _unwrap(model)(b[:, :-1], t, ignore_index=IGNORE_INDEX).loss
        total[0] += loss.double() * n
        total[1] += n
    if d.world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (float(total[0] / total[1]) if total[1] else math.nan), int(total[1])


def _unwrap(model: torch.nn.Module) -> Llama:
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


# -- the trainer: a recipe of setup / step / evaluate / checkpoint / report -----------------------


@dataclass
class RunData:
    """The run's packed data: training blocks and the eval set (optionally with masked targets)."""

    packed: PackedData
    train_blocks: Tensor
    eval_blocks: Tensor
    eval_targets: Tensor | None = None
    train_targets: Tensor | None = None  # pre-packed pairs: only the responses are learned


@dataclass
class Progress:
    """What a step changes: the step count, the curves and the cumulative tokens and FLOPs.

    Everything here goes into the checkpoint, so a resumed run continues the same curves.
    """

    step: int = 0
    loss_curve: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.loss_curve[-1]["tokens"] if self.loss_curve else 0

    @property
    def flops(self) -> float:
        return self.loss_curve[-1]["flops"] if self.loss_curve else 0.0


@dataclass
class TrainingRun:
    """Everything :func:`setup` builds for a run; the step, evaluate, checkpoint and report
    functions read it (and mutate only ``progress``, ``ledger``, the model and optimizer)."""

    cfg: TrainConfig
    out: Path
    dist: _Dist
    device: torch.device
    tokenizer: Any
    data: RunData
    model: Llama
    train_model: torch.nn.Module  # the model as stepped: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    sampler: _Sampler
    ledger: Ledger
    progress: Progress
    total_steps: int
    end_step: int
    use_bf16: bool
    say: Callable[..., None]

    @property
    def shape(self) -> ModelShape:
        return self.model.config.shape()

    @property
    def tokens_per_step(self) -> int:
        cfg = self.cfg
        return cfg.batch_size * cfg.grad_accum * self.dist.world * cfg.seq_len

    @property
    def flops_per_step(self) -> float:
        return self.shape.flops(self.tokens_per_step, self.cfg.seq_len, training=True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _set_threads(cfg: TrainConfig, device: torch.device, d: _Dist) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif device.type == "cpu" and d.world > 1:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", d.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def setup_data(cfg: TrainConfig, tokenizer: Any, dataset: Any, eval_dataset: Any,
               ledger: Ledger, d: _Dist) -> RunData:
    """Tokenize and pack the training data; the eval set is ``eval_dataset`` (a dataset or a
    :class:`PackedData`, e.g. from :func:`pack_pairs`), else ``cfg.eval_data``, else a held-out
    slice of the training blocks."""
    if dataset is None and cfg.data is None:
        raise ValueError("no training data: set `data` in the config or pass --data")
    if d.world > 1 and not d.main:
        dist.barrier()  # rank 0 tokenizes first and fills the datasets cache; the rest reuse it
    with ledger.stage("tokenize") as rec:
        if isinstance(dataset, PackedData):  # pre-packed, e.g. pack_pairs: responses only
            packed = dataset
            if packed.targets is not None and eval_dataset is None and not cfg.eval_data:
                raise ValueError("pre-packed training pairs need an eval set (eval_dataset)")
        else:
            packed = pack_data(dataset if dataset is not None else cfg.data, tokenizer, cfg)
        if isinstance(eval_dataset, PackedData):
            data = RunData(packed, packed.blocks, eval_dataset.blocks[: cfg.max_eval_blocks],
                           None if eval_dataset.targets is None
                           else eval_dataset.targets[: cfg.max_eval_blocks])
        elif eval_dataset is not None or cfg.eval_data:
            eval_data = eval_dataset if eval_dataset is not None else cfg.eval_data
            eval_blocks = pack_data(eval_data, tokenizer, cfg).blocks[: cfg.max_eval_blocks]
            data = RunData(packed, packed.blocks, eval_blocks)
        else:
            data = RunData(packed, *_split_blocks(packed.blocks, cfg))
        data.train_targets = packed.targets
        rec.add(tokens=packed.n_tokens)
    if d.world > 1 and d.main:
        dist.barrier()
    return data


def setup_model(cfg: TrainConfig, tokenizer: Any, device: torch.device) -> Llama:
    """The model to train: a preset built from scratch (seeded), or ``init_from`` weights."""
    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        init = None if cfg.init_from == "default" else cfg.init_from
        return load_llama(init, device=device)
    overrides = dict(cfg.model_overrides)
    overrides.setdefault("vocab_size", 64 * math.ceil(len(tokenizer) / 64))
    overrides.setdefault("max_seq_len", max(cfg.seq_len, LlamaConfig.preset(cfg.model).max_seq_len))
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        overrides.setdefault(key, getattr(tokenizer, key, None))
    return Llama(LlamaConfig.preset(cfg.model, **overrides)).to(device)


def setup_optimizer(cfg: TrainConfig, model: Llama, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms' gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        fused=device.type == "cuda",
    )


def resume_from(path: Path, model: Llama, optimizer: torch.optim.Optimizer,
                device: torch.device) -> tuple[Progress, Ledger]:
    """Load a checkpoint into the model and optimizer; return its progress and ledger."""
    ckpt = load_checkpoint(path, device)
    if ckpt["model_config"] != model.config.to_dict():
        raise CheckpointError(f"{path}: checkpoint is for a different model "
                              "configuration; pass --no-resume to start this run afresh")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit this model ({exc}); "
                              "pass --no-resume to start afresh") from None
    progress = Progress(ckpt["step"], ckpt["loss_curve"], ckpt["evals"])
    return progress, Ledger.from_dict(ckpt["ledger"])


def _wrap_for_training(cfg: TrainConfig, model: Llama, device: torch.device,
                       d: _Dist) -> torch.nn.Module:
    wrapped: torch.nn.Module = torch.compile(model) if cfg.compile else model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False)
    return wrapped


def setup(cfg: TrainConfig, out: Path, d: _Dist, *, dataset: Any = None,
          eval_dataset: Any = None, resume: bool = True, stop_at_step: int | None = None,
          verbose: bool = False) -> TrainingRun:
    """Device, data, model, optimizer and (with ``resume``) the checkpoint's state."""
    device = _pick_device(cfg.device, d)
    _set_threads(cfg, device, d)
    say = print if (verbose and d.main) else (lambda *a, **k: None)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(label=out.name)
    init = None if cfg.init_from in (None, "default") else cfg.init_from
    tokenizer = load_tokenizer(cfg.tokenizer or init)
    data = setup_data(cfg, tokenizer, dataset, eval_dataset, ledger, d)
    say(f"data: {data.packed.n_documents} documents, {data.packed.n_tokens} tokens, "
        f"{len(data.train_blocks)} train / {len(data.eval_blocks)} eval blocks of {cfg.seq_len + 1}")
    model = setup_model(cfg, tokenizer, device)
    top_id = int(data.packed.blocks.max())
    if top_id >= model.config.vocab_size:
        raise ValueError(f"token id {top_id} does not fit the model's vocab_size "
                         f"{model.config.vocab_size}")
    optimizer = setup_optimizer(cfg, model, device)
    progress = Progress()
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        progress, ledger = resume_from(ckpt_path, model, optimizer, device)
        say(f"resumed from {ckpt_path} at step {progress.step}")
    total_steps = cfg.steps_for(d.world)
    return TrainingRun(
        cfg=cfg, out=out, dist=d, device=device, tokenizer=tokenizer, data=data, model=model,
        train_model=_wrap_for_training(cfg, model, device, d), optimizer=optimizer,
        sampler=_Sampler(len(data.train_blocks), cfg.seed, cfg.batch_size, cfg.grad_accum, d.world),
        ledger=ledger, progress=progress, total_steps=total_steps,
        end_step=total_steps if stop_at_step is None else min(total_steps, stop_at_step),
        use_bf16=cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda"),
        say=say,
    )


def train_step(run: TrainingRun, step: int) -> float:
    """One optimizer step (``grad_accum`` micro-batches, clipping, the LR of the schedule);
    appends to the loss curve and books tokens and FLOPs on the open ``train`` stage."""
    cfg, d = run.cfg, run.dist
    lr = lr_at(step, cfg, run.total_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    step_loss = torch.zeros((), dtype=torch.float64, device=run.device)
    for micro in range(cfg.grad_accum):
        idx = run.sampler.indices(step, d.rank, micro)
        batch = run.data.train_blocks[idx].to(run.device, non_blocking=True)
        targets = batch[:, 1:] if run.data.train_targets is None \
            else run.data.train_targets[idx].to(run.device, non_blocking=True)
        sync = micro == cfg.grad_accum - 1 or d.world == 1
        with contextlib.nullcontext() if sync else run.train_model.no_sync():
            with run.autocast():
                loss = run.train_model(batch[:, :-1], targets,
                                       ignore_index=IGNORE_INDEX).loss / cfg.grad_accum
            loss.backward()
        step_loss += loss.detach().double()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if d.world > 1:
        dist.all_reduce(step_loss)
        step_loss /= d.world
    loss_val = float(step_loss)
    if not math.isfinite(loss_val):
        raise FloatingPointError(f"loss became {loss_val} at step {step + 1}")
    run.ledger.record("train").add(tokens=run.tokens_per_step, flops=run.flops_per_step)
    run.progress.loss_curve.append({
        "step": step + 1, "loss": loss_val, "lr": lr,
        "tokens": run.progress.tokens + run.tokens_per_step,
        "flops": run.progress.flops + run.flops_per_step,
    })
    run.progress.step = step + 1
    return loss_val


def run_evaluation(run: TrainingRun) -> float:
    """Evaluate at the current step; the time goes to the ``eval`` stage, not to ``train``."""
    started = time.perf_counter()
    loss, n_tokens = evaluate(run.train_model, run.data.eval_blocks, run.cfg.batch_size,
                              run.device, run.autocast, run.dist, run.data.eval_targets)
    seconds = time.perf_counter() - started
    run.ledger.record("train").seconds -= seconds
    record = run.ledger.record("eval")
    record.seconds += seconds
    record.add(tokens=n_tokens, flops=run.shape.flops(n_tokens, run.cfg.seq_len, training=False))
    run.progress.evals.append({"step": run.progress.step, "tokens": run.progress.tokens,
                               "flops": run.progress.flops, "eval_loss": loss})
    run.say(f"step {run.progress.step}: eval loss {loss:.4f}")
    return loss


def checkpoint(run: TrainingRun) -> None:
    """Write model, optimizer, progress and ledger (rank 0); the time is not training time.

    The ledger is read first, so the seconds it saves never include the checkpoint's own time.
    """
    ledger = run.ledger.to_dict()
    started = time.perf_counter()
    if run.dist.main:
        save_checkpoint({
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "step": run.progress.step,
            "loss_curve": run.progress.loss_curve,
            "evals": run.progress.evals,
            "ledger": ledger,
            "config": run.cfg.model_dump(),
            "model_config": run.model.config.to_dict(),
            "world_size": run.dist.world,
        }, run.out / CHECKPOINT)
    if run.dist.world > 1:
        dist.barrier()
    run.ledger.record("train").seconds -= time.perf_counter() - started


def report(run: TrainingRun, status: str) -> dict[str, Any]:
    """The run's report: config, model, data, ledger, loss curve, evals, FLOPs at each loss."""
    train_stage = run.ledger.record("train")
    evals = run.progress.evals
    return {
        "status": status,
        "steps": run.end_step,
        "total_steps": run.total_steps,
        "config": run.cfg.model_dump(),
        "model": run.model.config.to_dict(),
        "n_params": run.model.num_parameters(),
        "n_params_non_embedding": run.model.num_parameters(non_embedding=True),
        "matmul_params": run.shape.matmul_params,
        "world_size": run.dist.world,
        "tokens_per_step": run.tokens_per_step,
        "flops_per_step": run.flops_per_step,
        "data": {
            "documents": run.data.packed.n_documents,
            "tokens": run.data.packed.n_tokens,
            "train_blocks": len(run.data.train_blocks),
            "eval_blocks": len(run.data.eval_blocks),
            "epochs": run.sampler.epoch_of(run.end_step),
        },
        "tokens_per_second": train_stage.tokens / train_stage.seconds if train_stage.seconds else None,
        "loss_curve": run.progress.loss_curve,
        "evals": evals,
        "flops_at_eval_loss": [{"eval_loss": e["eval_loss"], "flops": e["flops"],
                                "tokens": e["tokens"], "step": e["step"]} for e in evals],
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "ledger": run.ledger.to_dict(),
    }


def write_outputs(run: TrainingRun, result: dict[str, Any]) -> None:
    """``report.json`` and, for a completed run with ``save_model``, the ``model/`` folder."""
    if run.dist.main:
        if run.cfg.save_model and result["status"] == "completed":
            with atomic_path(run.out / "model", is_dir=True) as folder:
                write_llama_files(_unwrap(run.model), folder)
                run.tokenizer.save_pretrained(folder)
        atomic_write_json(run.out / REPORT, result)
    if run.dist.world > 1:
        dist.barrier()


def _log_step(run: TrainingRun, loss: float, started: float, first_step: int) -> None:
    done = run.progress.step
    if done % run.cfg.log_every == 0 or done == run.end_step:
        rate = (done - first_step) * run.tokens_per_step / max(time.perf_counter() - started, 1e-9)
        lr = run.progress.loss_curve[-1]["lr"]
        run.say(f"step {done}/{run.total_steps} loss {loss:.4f} lr {lr:.2e} "
                f"{rate:,.0f} tok/s epoch {run.sampler.epoch_of(done):.2f}")


def fit(run: TrainingRun) -> dict[str, Any]:
    """The loop: step, log, evaluate every ``eval_every``, checkpoint; then the report."""
    cfg = run.cfg
    has_eval = len(run.data.eval_blocks) > 0
    first_step, started = run.progress.step, time.perf_counter()
    run.model.train()
    with run.ledger.stage("train"):
        if has_eval and not run.progress.evals:
            run_evaluation(run)
        for step in range(first_step, run.end_step):
            loss = train_step(run, step)
            _log_step(run, loss, started, first_step)
            done = run.progress.step
            if has_eval and (done % cfg.eval_every == 0 or done == run.total_steps):
                run_evaluation(run)
            if done == run.end_step or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                checkpoint(run)
    result = report(run, "completed" if run.end_step >= run.total_steps else "stopped")
    write_outputs(run, result)
    return result


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    dataset: Any = None,
    eval_dataset: Any = None,
    resume: bool = True,
    stop_at_step: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train (or fine-tune) and write ``out/report.json``, ``out/checkpoint.pt``, ``out/model/``.

    Args:
        config: the run's settings; ``config.data`` is used unless ``dataset`` is given.
        out: run folder. With ``resume`` and an existing checkpoint the run continues from it.
        eval_dataset: held-out data (a dataset or path, packed like the training data), or a
            :class:`PackedData` with ``targets`` to score only some positions.
        stop_at_step: stop (after checkpointing) once this many steps are done, as if
            interrupted; the schedule still follows the full run, so resuming completes it.
        verbose: print progress lines on rank 0.

    Returns the report (also written as JSON): config, model, ledger, loss curve, evals and
    ``flops_at_eval_loss``.
    """
    d = _setup_distributed(config.device)
    try:
        run = setup(config, Path(out), d, dataset=dataset, eval_dataset=eval_dataset,
                    resume=resume, stop_at_step=stop_at_step, verbose=verbose)
        return fit(run)
    finally:
        if d.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


# -- comparing runs ------------------------------------------------------------------------


def _load_report(report: dict | str | os.PathLike) -> dict:
    if isinstance(report, dict):
        return report
    path = Path(report)
    return json.loads((path / REPORT if path.is_dir() else path).read_text())


def flops_to_reach(report: dict | str | os.PathLike, loss: float) -> float | None:
    """Training FLOPs at the first eval whose loss is at or below ``loss`` (``None``: never).

    This is the comparison the product is about: curated data is worth it if it reaches the same
    held-out loss for fewer FLOPs.
    """
    for ev in _load_report(report)["flops_at_eval_loss"]:
        if ev["eval_loss"] <= loss:
            return float(ev["flops"])
    return None


def compare_runs(
    baseline: dict | str | os.PathLike, candidate: dict | str | os.PathLike, loss: float | None = None
) -> dict[str, Any]:
    """FLOPs each run needed to reach ``loss`` (default: the worse of the two final losses)."""
    a, b = _load_report(baseline), _load_report(candidate)
    if loss is None:
        finals = [r["final_eval_loss"] for r in (a, b) if r.get("final_eval_loss") is not None]
        loss = max(finals) if finals else math.nan
    fa, fb = flops_to_reach(a, loss), flops_to_reach(b, loss)
    return {
        "target_eval_loss": loss,
        "baseline_flops": fa,
        "candidate_flops": fb,
        "flops_saved_x": (fa / fb) if fa and fb else None,
    }


def iter_loss_curve(report: dict | str | os.PathLike) -> Iterator[tuple[int, float]]:
    for row in _load_report(report)["loss_curve"]:
        yield row["step"], row["loss"]
