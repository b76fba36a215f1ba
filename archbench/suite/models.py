"""The suite file's schema: pydantic models for its sections (defaults, measure, train, quality,
sweep, exclude, slurm) and the cell values they hold. Input is read strictly: a bool, a string or a
float where an integer belongs is an error, as are sizes past sane bounds."""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model, field_validator
from typing_extensions import Annotated

from archbench import registry
from archbench.fields import CELL_FIELDS
from archbench.schema import DTYPES, LEVELS, MODES

DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")

# Fields that identify a measurement (the cell key); timeouts and budgets are not among them.
KEY_FIELDS = CELL_FIELDS
MAX_SEQ_LEN, MAX_BATCH, MAX_DIM = 1 << 24, 1 << 20, 1 << 17

StrictInt = Annotated[int, Strict()]  # no bool, str or float where an integer belongs


def _int(default, ge: int | None = None, le: int | None = None, **kw):
    """An integer field read strictly: a bool, a string or a float is an error, not coerced."""
    return Field(default, ge=ge, le=le, strict=True, **kw)


class SuiteError(ValueError):
    """A suite that cannot be run; the message is one line and says what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasureConfig(_Strict):
    warmup: int = _int(3, ge=0, le=1 << 20)
    # ...and at least this long (None: 0.25 s on a GPU, whose clocks ramp up from idle; 0 on a CPU)
    warmup_s: float | None = Field(None, ge=0)
    min_repeats: int = _int(5, ge=1, le=1 << 24)
    max_repeats: int = _int(200, ge=1, le=1 << 24)
    budget_s: float = Field(2.0, gt=0)
    target_rel_iqr: float = Field(0.05, gt=0)
    energy: bool = True  # measure energy where a counter exists (NVML / RAPL); else recorded as none
    energy_window_s: float = Field(1.0, gt=0)
    decode_tokens: int = _int(16, ge=1, le=1 << 20)  # decode mode: tokens generated per timed call
    flush_l2: bool = True  # GPU: overwrite L2 before each timed call (cold-cache numbers, as do_bench)
    roofline: bool = True  # measure the device's matmul / copy peaks once per worker; rows get % of peak
    # GPU: time CUDA-graph replays (no launch overhead): true = every mode, "decode" = decode cells only
    cuda_graph: Union[bool, Literal["decode"]] = False
    pin_cpus: bool = False  # CPU: pin the worker to `threads` cores (os.sched_setaffinity) for the cell

    @field_validator("cuda_graph", mode="before")
    @classmethod
    def _cuda_graph(cls, v):
        if isinstance(v, bool) or v == "decode":
            return v
        raise ValueError(f"cuda_graph must be true, false or decode (decode cells only), got {v!r}")


class TrainConfig(_Strict):
    """How a ``mode: task`` cell trains (``archbench.tasks.train``); part of its key."""

    steps: int = _int(1000, ge=1, le=1 << 30)  # optimiser steps per run (fewer when the target is reached)
    # passes over train_examples instead of `steps` (Zoology's protocol: an evaluation after each epoch)
    epochs: int | None = Field(None, ge=1)
    # examples per step (a task cell's ``batch``); a mapping seq_len -> batch sets it per length, as Zoology does
    batch_size: Union[int, dict[int, int]] = 64
    lr: Union[float, list[float]] = 1e-3  # a grid: every value is trained, the best is reported
    seeds: int = _int(1, ge=1, le=1 << 16)  # runs per lr, with seeds seed, seed+1, ...: mean and spread
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 = off
    eval_every: int = _int(100, ge=1, le=1 << 30)
    target: float | None = None  # early stop when the held-out score passes it
    train_examples: int = _int(20_000, ge=1, le=1 << 30)
    test_examples: int = _int(500, ge=1, le=1 << 30)
    eval_batch: int = _int(256, ge=1, le=MAX_BATCH)
    max_train_s: float | None = Field(None, gt=0)  # wall-time cap per (lr, seed) run: evaluate and stop there
    ffn: str = "auto"  # auto (the task's default: none for recall tasks), none, swiglu, moe

    @field_validator("lr")
    @classmethod
    def _lr(cls, v):
        vals = v if isinstance(v, list) else [v]
        if not vals or any(x <= 0 for x in vals):
            raise ValueError("lr must be a positive number or a non-empty list of them")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v):
        sizes = list(v.values()) if isinstance(v, dict) else [v]
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError("batch_size must be a positive integer or a mapping seq_len -> positive integer")
        return v

    def batch_for(self, seq_len: int) -> int:
        """The training batch at ``seq_len`` (a mapping must name every swept length)."""
        if not isinstance(self.batch_size, dict):
            return self.batch_size
        if seq_len not in self.batch_size:
            raise ValueError(f"train.batch_size names no batch for seq_len {seq_len} (it has {sorted(self.batch_size)}); add one")
        return self.batch_size[seq_len]

    @field_validator("ffn")
    @classmethod
    def _ffn(cls, v: str) -> str:
        if v not in ("auto", "none", "swiglu", "moe"):
            raise ValueError(f"unknown ffn {v!r}; allowed: auto, none, swiglu, moe")
        return v

    def lrs(self) -> list[float]:
        return [float(x) for x in (self.lr if isinstance(self.lr, list) else [self.lr])]


class QualityConfig(_Strict):
    """How ``bpb`` and ``lm_eval`` checkpoint cells score a model (``archbench.quality``); part of their key."""

    text: str = "stdlib"  # bpb: "stdlib" (held-out stdlib sources, as the recipes) or a UTF-8 text file
    max_bytes: int = _int(2_000_000, ge=2, le=1 << 34)  # bpb: the stdlib corpus budget, or a file's prefix
    max_windows: int | None = _int(64, ge=1, le=1 << 24)  # bpb: windows of seq_len tokens scored (None: all)
    limit: Union[int, float, None] = 100  # lm_eval: documents per task (a float < 1: a fraction); None: all
    num_fewshot: int | None = _int(None, ge=0, le=1 << 10)  # lm_eval: None = the task's default
    include_path: str | None = None  # lm_eval: a directory of local task YAMLs (nothing downloaded for them)


class CellValues(_Strict):
    """The value of every cell field (defaults) — one scalar each."""

    arch: str | None = None
    backend: str = "auto"
    mode: str = "fwd"
    level: str = "mixer"  # mixer: the token mixer alone; model: a small LM (embedding, blocks, head)
    n_layers: int = _int(2, ge=1, le=1 << 12)  # model level: blocks of this mixer (hybrids bring their own)
    vocab_size: int = _int(256, ge=2, le=MAX_SEQ_LEN)  # model level
    dtype: str = "float32"
    device: str = "cpu"
    batch: int = _int(1, ge=1, le=MAX_BATCH)
    seq_len: int = _int(1024, ge=1, le=MAX_SEQ_LEN)
    d_model: int = _int(256, ge=1, le=MAX_DIM)
    n_heads: int = _int(4, ge=1, le=1 << 12)
    head_dim: int | None = _int(None, ge=1, le=MAX_DIM)
    n_kv_heads: int | None = _int(None, ge=1, le=1 << 12)
    chunk_size: int = _int(64, ge=1, le=MAX_SEQ_LEN)
    d_state: int | None = _int(None, ge=1, le=MAX_DIM)
    expand: int = _int(2, ge=1, le=1 << 8)
    conv_size: int = _int(4, ge=0, le=1 << 12)
    window: int | None = _int(None, ge=1, le=MAX_SEQ_LEN)
    block_size: int = _int(64, ge=1, le=MAX_SEQ_LEN)
    block_count: int = _int(16, ge=1, le=MAX_SEQ_LEN)
    threads: int | None = _int(None, ge=1, le=1 << 16)
    seed: int = _int(0, ge=0, le=(1 << 63) - 1)
    task: str | None = None  # mode task: which task (archbench.tasks), e.g. mqar
    num_kv_pairs: int | None = _int(None, ge=1, le=MAX_SEQ_LEN)  # mqar: key-value pairs per example
    # one short causal convolution for every recurrent mixer (linear/, rnn/, ssm/ families) with this
    # kernel, their own convolutions removed; 0 = no short convolution anywhere; unset = as published
    short_conv: int | None = Field(None, ge=0)
    model: str | None = None  # level checkpoint: a local checkpoint directory or a hub id ORG/NAME
    trust_remote_code: bool = False  # level checkpoint: run code the checkpoint ships (off unless asked)
    eval_task: str | None = None  # mode lm_eval: the lm-evaluation-harness task
    recipe: str | None = None  # mode recipe: which conversion / distillation recipe (archbench.recipes)

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | None) -> str | None:
        if v is not None:
            from archbench.tasks import TASKS

            if v not in TASKS:
                raise ValueError(f"unknown task {v!r}; allowed: {', '.join(sorted(TASKS))}")
        return v

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, v: str | None) -> str | None:
        if v is not None:
            from archbench.recipes import RECIPES

            if v not in RECIPES:
                raise ValueError(f"unknown recipe {v!r}; allowed: {', '.join(RECIPES)}")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"unknown mode {v!r}; allowed: {', '.join(MODES)}")
        return v

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in LEVELS:
            raise ValueError(f"unknown level {v!r}; allowed: {', '.join(LEVELS)}")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; allowed: {', '.join(DTYPES)}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"unknown device {v!r}; allowed: cpu, cuda, cuda:N")
        return v

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is not None:
            registry.get(v)  # RegistryError (a ValueError) lists the known names
        return v


class Defaults(CellValues):
    timeout_s: float = Field(300.0, gt=0)
    stop_after_oom: bool = False  # after an OOM, record longer seq_len of the same cell as skipped
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)  # task cells
    task_args: dict[str, dict[str, Any]] = Field(default_factory=dict)  # task name -> its options, e.g. {mqar: {power_a: 0.01}}
    quality: QualityConfig = Field(default_factory=QualityConfig)  # checkpoint cells in mode bpb / lm_eval
    # recipe name -> its settings (archbench.recipes.make_config), e.g. {rad: {k: 3, steps: 300}}; recipe cells
    recipe_args: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ArchSelector(_Strict):
    """``arch: all`` or ``arch: {family: linear, exclude: [...]}``: the catalogue chosen by taxonomy
    instead of by name, so that a suite keeps up with the catalogue (new entries join it)."""

    family: Union[str, list[str], None] = None  # taxonomy prefixes (linear, ssm/ssd, ...); none = every family
    level: Literal["mixer", "model", "checkpoint"] = "mixer"  # entries of this level only
    exclude: list[str] = Field(default_factory=list)  # names left out
    include: list[str] = Field(default_factory=list)  # names added (e.g. one entry of another family)

    def names(self) -> list[str]:
        families = [self.family] if isinstance(self.family, str) else (self.family or [""])
        chosen = [s.name for s in registry.builtin_specs() if s.level == self.level
                  and any(s.family == f or s.family.startswith(f.rstrip("/") + "/") or not f for f in families)]  # fmt: skip
        for n in self.exclude + self.include:
            registry.get(n)  # an unknown name is an error listing the known ones
        return [n for n in chosen if n not in self.exclude] + [n for n in self.include if n not in chosen]


class _SweepBase(_Strict):
    def values(self, field: str) -> list[Any] | None:
        v = getattr(self, field)
        if v is None:
            return None
        if field == "arch":
            if v == "all":
                v = ArchSelector()
            if isinstance(v, ArchSelector):
                return v.names()
        return v if isinstance(v, list) else [v]


def _sweep_type(field: str) -> Any:
    """A sweep field holds the scalar type of the cell field or a list of it."""
    ann = CellValues.model_fields[field].annotation
    scalar = next((a for a in getattr(ann, "__args__", (ann,)) if a is not type(None)), ann)
    if scalar is int:
        scalar = StrictInt  # `seq_len: true` or `"64"` in a sweep is an error, not T=1 / T=64
    return Union[scalar, list[scalar], None]


Sweep = create_model(
    "Sweep",
    __base__=_SweepBase,
    arch=(Union[str, list[str], ArchSelector, None], None),  # required, except by mode recipe cells
    **{f: (_sweep_type(f), None) for f in CELL_FIELDS if f != "arch"},
)


class Range(_Strict):
    min: float | None = None
    max: float | None = None


Matcher = Union[int, float, str, list[Union[int, float, str]], Range]


class _ExcludeBase(_Strict):
    def matches(self, cell: dict) -> bool:
        rules = self.model_dump(exclude_none=True)
        if not rules:
            return False
        for field, m in rules.items():
            value = cell.get(field)
            if isinstance(m, dict):  # Range
                if value is None:
                    return False
                if m.get("min") is not None and value < m["min"]:
                    return False
                if m.get("max") is not None and value > m["max"]:
                    return False
            elif isinstance(m, list):
                if value not in m:
                    return False
            elif value != m:
                return False
        return True


ExcludeRule = create_model("ExcludeRule", __base__=_ExcludeBase, **{f: (Matcher | None, None) for f in CELL_FIELDS})


class SlurmConfig(_Strict):
    """Where ``archbench run --executor slurm`` submits the shards (the command line overrides
    partition, time_min and account); not part of any cell's key."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = _int(240, ge=1, le=60 * 24 * 30)  # per array task; a shard that runs out is requeued and resumes
    cpus_per_task: int = _int(8, ge=1, le=1024)
    mem_gb: int | None = Field(None, ge=1, strict=True)
    array_parallelism: int = _int(256, ge=1, le=1 << 16)
    setup: list[str] = Field(default_factory=list)  # shell lines run before each task (module load ...)


class SuiteModel(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    plugins: list[str] = Field(default_factory=list)
    defaults: Defaults = Field(default_factory=Defaults)
    sweep: Sweep
    exclude: list[ExcludeRule] = Field(default_factory=list)
    # arch -> cell fields that replace the defaults for that arch alone (e.g. nsa: {n_kv_heads: 1},
    # the GQA group fla's NSA kernels need); a field may not be both swept and set here
    arch_defaults: dict[str, dict[str, Any]] = Field(default_factory=dict)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)  # --executor slurm only


