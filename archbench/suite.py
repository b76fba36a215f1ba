"""Suites: a YAML file that names a sweep, validated, expanded into cells.

    name: smoke
    plugins: []                 # modules to import that register extra architectures
    defaults:                   # scalar values for every cell field + run settings
      device: cpu
      dtype: float32
      timeout_s: 120
      measure: {warmup: 2, budget_s: 1.0}
    sweep:                      # list-valued fields expand as a cartesian product
      arch: [softmax_attention, linear_attention]
      backend: [auto]
      mode: [fwd, fwd_bwd]
      seq_len: [256, 512, 1024]
    exclude:                    # a cell matching every field of a rule is dropped
      - {arch: softmax_attention, backend: naive, seq_len: {min: 2048}}

Every error is a ``SuiteError`` whose message is one line naming the file, the key
path and what is allowed. Input is read strictly, because a value coerced in silence measures
something else than was asked: a key given twice in one mapping, a boolean or string where an
integer belongs (``seq_len: true`` is not T=1, ``"64"`` is not 64), and sizes past sane bounds
(T > 2^24, batch > 2^20) are errors.

A cell's key hashes every field that changes what is measured: the cell fields, the measurement
switches of ``MEASURE_KEY_FIELDS`` (CUDA-graph replay, decode tokens per call, L2 flush, CPU
pinning) and, for task cells, how they train. Run settings (timeouts, budgets, repeats, warm-up)
are not in it. A switch, or a cell field added after the first keyed release, joins a key only when
it is set away from its default, so cells at the defaults keep the keys they always had (resume and
compare match rows across versions by key).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model, field_validator
from typing_extensions import Annotated

from archbench import registry
from archbench.fields import CELL_FIELDS, KEYED_ALWAYS, MEASURE_KEY_FIELDS
from archbench.mixers.base import MixerConfig
from archbench.spec import DTYPES

MODES = ("fwd", "fwd_bwd", "prefill", "decode", "task", "bpb", "lm_eval")
QUALITY_MODES = ("bpb", "lm_eval")  # level checkpoint: a pretrained model's quality (archbench.quality)
BACKWARD_MODES = ("fwd_bwd", "task")  # modes that differentiate: auto picks a backend with a backward
LEVELS = ("mixer", "model", "checkpoint")  # checkpoint: a pretrained model named by `model` (archbench.checkpoint)
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

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | None) -> str | None:
        if v is not None:
            from archbench.tasks import TASKS

            if v not in TASKS:
                raise ValueError(f"unknown task {v!r}; allowed: {', '.join(sorted(TASKS))}")
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
    arch=(Union[str, list[str], ArchSelector], ...),
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


class Cell(BaseModel):
    """One point of the sweep, with the settings of its measurement."""

    model_config = ConfigDict(frozen=True)

    arch: str
    backend: str
    level: str
    n_layers: int
    vocab_size: int
    mode: str
    dtype: str
    device: str
    batch: int
    seq_len: int
    d_model: int
    n_heads: int
    head_dim: int | None
    n_kv_heads: int | None
    chunk_size: int
    d_state: int | None
    expand: int
    conv_size: int
    window: int | None
    block_size: int
    block_count: int
    threads: int | None
    seed: int
    task: str | None = None
    num_kv_pairs: int | None = None
    short_conv: int | None = None
    model: str | None = None
    trust_remote_code: bool = False
    eval_task: str | None = None
    timeout_s: float
    stop_after_oom: bool = False
    measure: MeasureConfig
    train: TrainConfig | None = None  # task cells only
    task_args: dict[str, dict[str, Any]] | None = None  # task cells only
    quality: QualityConfig | None = None  # checkpoint cells in mode bpb / lm_eval only
    backend_choice: str | None = None  # backend auto: why the backends before the chosen one were passed over

    @property
    def key(self) -> str:
        ident = self.identity()
        switches = self.measure_identity()
        if switches:  # at their defaults they stay out, and keys predating them stay as they were
            ident["measure"] = switches
        if self.mode == "task":  # how it trains defines what a task cell measures
            train = self.train.model_dump() if self.train else None
            for optional in ("max_train_s", "epochs"):
                if train and train.get(optional) is None:
                    del train[optional]  # unset, it leaves the keys of earlier runs as they were
            ident["train"] = train
            ident["task_args"] = self.task_args or {}
        if self.mode in QUALITY_MODES and self.quality is not None:  # how it is scored defines a quality cell
            ident["quality"] = self.quality.model_dump()
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        level = f" [model L={self.n_layers}]" if self.level == "model" else ""
        if self.level == "checkpoint":
            what = f"lm_eval {self.eval_task}" if self.mode == "lm_eval" else self.mode
            return f"{self.model}/{self.backend} {what} {self.dtype} B={self.batch} T={self.seq_len}"
        if self.mode == "task":
            kv = f" kv={self.num_kv_pairs}" if self.num_kv_pairs else ""
            return f"{self.arch}/{self.backend} task {self.task}{kv} d={self.d_model} L={self.n_layers} T={self.seq_len}"
        return f"{self.arch}/{self.backend}{level} {self.mode} {self.dtype} d={self.d_model} B={self.batch} T={self.seq_len}"

    def identity(self) -> dict:
        """The cell fields of the key: every field of the first keyed release, and each field added
        since (task, num_kv_pairs, short_conv, ...) when set away from its default."""
        out = {}
        defaults = _cell_defaults()
        for f in KEY_FIELDS:
            v = getattr(self, f)
            if f in KEYED_ALWAYS or v != defaults[f]:
                out[f] = v
        return out

    def measure_identity(self) -> dict:
        """The measurement switches that change this cell's number, where they differ from the
        default: CUDA-graph replay (as it applies to this cell: ``decode`` means decode cells,
        and only on a GPU), tokens per decode call (decode cells), the L2 flush (GPU cells) and
        CPU pinning (CPU cells)."""
        m, cuda = self.measure, self.device.startswith("cuda")
        default = _measure_defaults()
        effective = {
            "cuda_graph": cuda and (m.cuda_graph is True or (m.cuda_graph == "decode" and self.mode == "decode")),
            "decode_tokens": m.decode_tokens if self.mode == "decode" else default["decode_tokens"],
            "flush_l2": m.flush_l2 if cuda else default["flush_l2"],
            "pin_cpus": m.pin_cpus and not cuda,
        }
        return {f: v for f, v in effective.items() if v != default[f]}

    def without_seq_len(self) -> tuple:
        """The cell's identity minus its length: cells of one scaling curve share it."""
        return tuple((f, v) for f, v in self.identity().items() if f != "seq_len")


@functools.lru_cache(maxsize=None)
def _cell_defaults() -> dict[str, Any]:
    """Each key field's default (read once: pydantic's ``model_fields`` is slow to reach per cell)."""
    return {f: CellValues.model_fields[f].default for f in KEY_FIELDS}


@functools.lru_cache(maxsize=None)
def _measure_defaults() -> dict[str, Any]:
    return {f: MeasureConfig.model_fields[f].default for f in MEASURE_KEY_FIELDS}


class Suite:
    """A validated suite: its model, source path, and expanded cells."""

    def __init__(self, model: SuiteModel, path: str | None = None, raw: dict | None = None):
        self.model = model
        self.path = path
        self.raw = raw or {}
        self._cells: dict[str, Cell] | None = None

    @property
    def name(self) -> str:
        return self.model.name

    def cells(self) -> list[Cell]:
        """The expanded cells (expanded once: loading a suite expands it to check it)."""
        if self._cells is None:
            self._cells = expand_keyed(self.model, source=self.path or "<suite>")
        return list(self._cells.values())

    def keys(self) -> list[str]:
        """The cells' keys, in the order of ``cells()`` (hashed once, while expanding)."""
        self.cells()
        return list(self._cells)


# ---- loading and errors -----------------------------------------------------------------

_ALLOWED = {
    (): list(SuiteModel.model_fields),
    ("defaults",): list(Defaults.model_fields),
    ("defaults", "measure"): list(MeasureConfig.model_fields),
    ("defaults", "train"): list(TrainConfig.model_fields),
    ("sweep",): list(Sweep.model_fields),
    ("exclude",): list(ExcludeRule.model_fields),
    ("slurm",): list(SlurmConfig.model_fields),
}


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-branch markers ('int', 'list[int]', 'Range', ...) from a loc."""
    keep = []
    for part in loc:
        if isinstance(part, str) and (
            part in {"int", "str", "float", "Range", "ArchSelector", "none", "function-after"}
            or part.startswith(("list[", "union[", "function-", "constrained-"))
        ):
            continue
        keep.append(part)
    return tuple(keep)


_FRIENDLY = {
    "greater_than_equal": lambda c: f"must be >= {c.get('ge')}",
    "greater_than": lambda c: f"must be > {c.get('gt')}",
    "less_than_equal": lambda c: f"must be <= {c.get('le')}",
    "int_from_float": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "string_type": lambda c: "must be a string",
    "string_pattern_mismatch": lambda c: "must be letters, digits, '_', '.' or '-' (no spaces)",
    "list_type": lambda c: "must be a list",
}


def _format_error(source: str, err: dict) -> str:
    loc = _clean_loc(tuple(err.get("loc", ())))
    where = _loc_str(loc) or "(top level)"
    if err.get("type") == "extra_forbidden":
        parent = tuple(p for p in loc[:-1] if not isinstance(p, int))
        allowed = _ALLOWED.get(parent)
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return f"{source}: {where}: unknown key{hint}"
    if err.get("type") == "missing":
        return f"{source}: {where}: required key is missing"
    msg = _FRIENDLY.get(err.get("type"), lambda ctx: None)(err.get("ctx") or {})
    if msg is None:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    if got_s and repr(got) in msg:
        got_s = ""
    return f"{source}: {where}: {msg}{got_s}"


def _first_errors(source: str, e: ValidationError) -> str:
    """One line per distinct location, the most specific error first; pydantic reports one
    error per union branch, so keep a single error for each cleaned location."""
    seen: dict[str, str] = {}
    for err in e.errors():
        loc = _loc_str(_clean_loc(tuple(err.get("loc", ()))))
        line = _format_error(source, err)
        if loc not in seen or "Input should be a valid list" in seen[loc]:
            seen[loc] = line
    # a list that failed item by item also fails as a scalar (union branches): keep the item's error
    specific = {loc: line for loc, line in seen.items()
                if not any(o != loc and o.startswith((loc + "[", loc + ".")) for o in seen)}  # fmt: skip
    return "\n".join(specific.values())


def set_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a raw suite dict in place."""
    if "=" not in assignment:
        raise SuiteError(f"--set {assignment!r}: expected KEY=VALUE, e.g. sweep.seq_len=[1024,2048]")
    path, value = assignment.split("=", 1)
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise SuiteError(f"--set {assignment!r}: empty key")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SuiteError(f"--set {assignment!r}: value is not valid YAML ({e})") from None
    node = raw
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise SuiteError(f"--set {assignment!r}: {p!r} is not a mapping")
        node = nxt
    node[parts[-1]] = parsed


def parse_suite(raw: Any, source: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: a suite must be a YAML mapping with at least 'name' and 'sweep'")
    plugins = raw.get("plugins") or []
    if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
        here = Path(source).parent if Path(source).is_file() else Path.cwd()
        plugins = [str((here / p).absolute()) if registry.is_plugin_path(p) and not Path(p).expanduser().is_absolute() else p for p in plugins]
        raw = {**raw, "plugins": plugins}  # workers import the same files whatever their working directory
        try:
            registry.load_plugins(plugins)
        except registry.RegistryError as e:
            raise SuiteError(f"{source}: plugins: {e}") from None
    try:
        model = SuiteModel.model_validate(raw)
    except ValidationError as e:
        raise SuiteError(_first_errors(source, e)) from None
    suite = Suite(model, path=source, raw=raw)
    suite.cells()  # expansion errors surface at load time
    return suite


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error naming
    its path and both lines (plain PyYAML keeps the last and drops the first in silence)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base loader reports it
                continue
            if first is not None:
                path = ".".join(self._path(node) + [str(key)])
                raise DuplicateKey(
                    f"line {key_node.start_mark.line + 1}: {path}: key given twice (first on line {first + 1}); keep one"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def _path(self, target) -> list[str]:
        """The keys leading to mapping ``target`` from the document's root."""

        def walk(node, trail):
            if node is target:
                return trail
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    found = walk(v, trail + [str(k.value)])
                    if found is not None:
                        return found
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    found = walk(v, trail[:-1] + [f"{trail[-1]}[{i}]"] if trail else [f"[{i}]"])
                    if found is not None:
                        return found
            return None

        return walk(self._root, []) or []

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"suite file not found: {p} (see suites/ for examples)")
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except DuplicateKey as e:
        raise SuiteError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SuiteError(f"{p}: {where}invalid YAML: {problem}") from None
    if isinstance(raw, dict):
        for o in overrides:
            set_override(raw, o)
    return parse_suite(raw, source=str(p))


# ---- expansion --------------------------------------------------------------------------


def expand(model: SuiteModel, source: str = "<suite>") -> list[Cell]:
    """The cartesian product of the sweep over the defaults, minus exclusions and
    (arch, backend) pairs the arch does not implement; 'auto' backends resolved."""
    return list(expand_keyed(model, source).values())


def expand_keyed(model: SuiteModel, source: str = "<suite>") -> dict[str, Cell]:
    """``expand``'s cells by key, in sweep order."""
    d = model.defaults
    axes: list[list[Any]] = []
    for i, f in enumerate(CELL_FIELDS):
        try:
            vals = model.sweep.values(f)
        except registry.RegistryError as e:
            raise SuiteError(f"{source}: sweep.{f}: {e}") from None
        if vals is None:
            vals = [getattr(d, f)]
        if not vals and f == "arch":
            families = sorted({s.family.split("/")[0] for s in registry.builtin_specs()})
            raise SuiteError(f"{source}: sweep.arch: the selector chooses no architecture; families: {', '.join(families)}")
        if not vals:
            raise SuiteError(f"{source}: sweep.{f}: empty list; give at least one value")
        # validate each swept value with the defaults' validators
        for j, v in enumerate(vals):
            try:
                CellValues.model_validate({f: v})
            except (ValidationError, ValueError) as e:
                if isinstance(e, ValidationError):
                    err = e.errors()[0]
                    err = {**err, "loc": ("sweep", f, j) if isinstance(model.sweep.__dict__[f], list) else ("sweep", f)}
                    raise SuiteError(_format_error(source, err)) from None
                raise SuiteError(f"{source}: sweep.{f}: {e}") from None
        axes.append(vals)

    archs = axes[CELL_FIELDS.index("arch")]
    if archs == [None]:
        raise SuiteError(f"{source}: sweep.arch: required; known: {', '.join(registry.names())}")
    backends = axes[CELL_FIELDS.index("backend")]
    specs = {a: registry.get(a) for a in archs}
    all_backends = sorted({b for s in specs.values() for b in s.backend_names})
    generic = ("auto", "reference")
    for b in backends:
        if b not in generic and b not in all_backends:
            raise SuiteError(
                f"{source}: sweep.backend: {b!r} is not a backend of any swept arch; allowed: auto, reference, {', '.join(all_backends)}"
            )
    for a, s in specs.items():
        if not any(b in generic or b in s.backend_names for b in backends):
            raise SuiteError(
                f"{source}: sweep.backend: none of {backends} is a backend of {a!r} (it has: {', '.join(s.backend_names)}); add one or use auto"
            )

    per_arch = _arch_defaults(model, source)
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*axes):
        values = dict(zip(CELL_FIELDS, combo))
        values.update(per_arch.get(values["arch"], {}))
        spec = specs[values["arch"]]
        if values["backend"] not in generic and values["backend"] not in spec.backend_names:
            continue
        backward = values["mode"] in BACKWARD_MODES
        asked = values["backend"]
        config = _mixer_config(values)  # None when the dims are impossible: _check_dims says so below
        values["backend"] = spec.resolve_backend(asked, values["device"], values["dtype"], backward, config)
        choice = _passed_over(spec, values, backward, config) if asked == "auto" else None
        if values["mode"] == "task" and any(rule.matches(values) for rule in model.exclude):
            continue  # before the task checks its options: an excluded shape need not be a valid task
        task_extra = _task_values(values, d, source)
        task_extra.update(_checkpoint_values(values, spec, d, source))
        if any(rule.matches(values) for rule in model.exclude):
            continue
        if config is None:  # the config was made above; only an impossible one needs the error
            _check_dims(values, source)
        cell = Cell(**values, timeout_s=d.timeout_s, stop_after_oom=d.stop_after_oom, measure=d.measure,
                    backend_choice=choice, **task_extra)  # fmt: skip
        cells.setdefault(cell.key, cell)
    if not cells:
        raise SuiteError(f"{source}: the sweep expands to no cells (every cell is excluded); loosen 'exclude'")
    return cells


def _passed_over(spec, values: dict, backward: bool, config: MixerConfig | None = None) -> str | None:
    """For ``backend: auto``: each backend listed before the chosen one, and why it cannot run this
    cell (not installed, wrong device or dtype, forward only where the cell needs a backward, or
    shapes its kernel does not take)."""
    skipped = []
    for b in spec.backends:
        if b.name == values["backend"]:
            break
        reason = b.unavailable_reason(values["device"], values["dtype"], backward) or b.config_reason(config)
        if reason:
            skipped.append(f"{b.name}: {reason}")
    return "; ".join(skipped) or None


def _arch_defaults(model: SuiteModel, source: str) -> dict[str, dict[str, Any]]:
    """``arch_defaults`` checked: known archs, cell fields that are not swept, valid values."""
    out: dict[str, dict[str, Any]] = {}
    for arch, fields in model.arch_defaults.items():
        where = f"{source}: arch_defaults.{arch}"
        try:
            registry.get(arch)
        except registry.RegistryError as e:
            raise SuiteError(f"{where}: {e}") from None
        for f, v in fields.items():
            if f not in CELL_FIELDS or f == "arch":
                allowed = ", ".join(x for x in CELL_FIELDS if x != "arch")
                raise SuiteError(f"{where}.{f}: not a cell field; allowed: {allowed}")
            if model.sweep.values(f) is not None:
                raise SuiteError(f"{where}.{f}: {f} is also swept; set it in one place (drop it from sweep or here)")
            try:
                CellValues.model_validate({f: v})
            except ValidationError as e:
                raise SuiteError(f"{where}.{f}: {e.errors()[0]['msg']}") from None
        out[arch] = dict(fields)
    return out


def _checkpoint_values(values: dict, spec, d: Defaults, source: str) -> dict:
    """Checkpoint cells: ``arch: checkpoint`` with ``level: checkpoint`` and a ``model``; quality
    modes (``bpb``, ``lm_eval``) only there, ``lm_eval`` with an ``eval_task``. A model that is
    neither an existing directory nor a hub id (ORG/NAME) fails here; a hub id is resolved when the
    cell runs (an ``unsupported`` row that says to pass a local path when the hub cannot be reached).
    Other cells: the checkpoint fields must be unset."""
    where = f"{source}: cell {values['arch']} {values['mode']}"
    is_ckpt = values["level"] == "checkpoint"
    if is_ckpt != (spec.level == "checkpoint"):
        raise SuiteError(f"{where}: a pretrained model takes arch: checkpoint with level: checkpoint (and model: DIR); "
                         f"got arch {values['arch']!r} at level {values['level']!r}")  # fmt: skip
    if not is_ckpt:
        if values["mode"] in QUALITY_MODES:
            raise SuiteError(f"{where}: mode {values['mode']} scores a pretrained model; use arch: checkpoint, "
                             "level: checkpoint and model: DIR")  # fmt: skip
        if values.get("model") is not None or values.get("eval_task") is not None:
            raise SuiteError(f"{where}: model and eval_task belong to level: checkpoint cells")
        return {}
    if not values.get("model"):
        raise SuiteError(f"{where}: level checkpoint needs model: a local checkpoint directory or a hub id ORG/NAME")
    from archbench.checkpoint import CheckpointError, source_of

    try:
        source_of(values["model"])
    except CheckpointError as e:
        raise SuiteError(f"{where}: {e}") from None
    if values["mode"] == "task":
        raise SuiteError(f"{where}: checkpoint cells measure prefill, decode, fwd, fwd_bwd, bpb or lm_eval, not task")
    if values["mode"] != "lm_eval":
        values["eval_task"] = None
        return {"quality": d.quality} if values["mode"] == "bpb" else {}
    if not values.get("eval_task"):
        raise SuiteError(f"{where}: mode lm_eval needs eval_task (an lm-evaluation-harness task, e.g. piqa)")
    return {"quality": d.quality}


def _task_values(values: dict, d: Defaults, source: str) -> dict:
    """Task cells: a task is required, the batch is the training batch, and the task's own
    options are checked now (so an impossible MQAR shape fails before anything runs).
    Other modes: the task fields are cleared (a suite may sweep ``mode: [decode, task]``)."""
    if values["mode"] != "task":
        values["task"] = values["num_kv_pairs"] = None
        return {}
    if values["task"] is None:
        raise SuiteError(f"{source}: mode task needs a task (sweep.task or defaults.task), e.g. task: mqar")
    try:
        values["batch"] = d.train.batch_for(values["seq_len"])
    except ValueError as e:
        raise SuiteError(f"{source}: defaults.{e}") from None
    from archbench.tasks import TaskError
    from archbench.tasks.cell import task_from_cell

    try:
        task_from_cell({**values, "task_args": d.task_args})
    except TaskError as e:
        raise SuiteError(f"{source}: cell {values['arch']} task {values['task']} T={values['seq_len']}: {e}") from None
    train = d.train if not isinstance(d.train.batch_size, dict) else d.train.model_copy(update={"batch_size": values["batch"]})
    return {"train": train, "task_args": dict(d.task_args)}


def _mixer_config(v: dict) -> MixerConfig | None:
    """The cell's mixer config (``auto`` checks it against each kernel's shape limits), or None."""
    try:
        return _make_config(v)
    except ValueError:
        return None


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(MixerConfig))


def _make_config(v: dict) -> MixerConfig:
    return MixerConfig(**{k: x for k, x in v.items() if k in _CONFIG_FIELDS and x is not None})


def _check_dims(v: dict, source: str) -> None:
    """Refuse impossible shapes (d_model not divisible by n_heads, ...) before anything runs."""
    try:
        _make_config(v)
    except ValueError as e:
        raise SuiteError(f"{source}: cell {v['arch']} T={v['seq_len']}: {e}") from None
