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
path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from archbench import registry
from archbench.fields import CELL_FIELDS, TASK_FIELDS
from archbench.mixers.base import MixerConfig
from archbench.spec import DTYPES

MODES = ("fwd", "fwd_bwd", "prefill", "decode", "task")
BACKWARD_MODES = ("fwd_bwd", "task")  # modes that differentiate: auto picks a backend with a backward
LEVELS = ("mixer", "model")
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")

# Fields that identify a measurement (the cell key); timeouts and budgets are not among them.
KEY_FIELDS = CELL_FIELDS


class SuiteError(ValueError):
    """A suite that cannot be run; the message is one line and says what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasureConfig(_Strict):
    warmup: int = Field(3, ge=0)
    # ...and at least this long (None: 0.25 s on a GPU, whose clocks ramp up from idle; 0 on a CPU)
    warmup_s: float | None = Field(None, ge=0)
    min_repeats: int = Field(5, ge=1)
    max_repeats: int = Field(200, ge=1)
    budget_s: float = Field(2.0, gt=0)
    target_rel_iqr: float = Field(0.05, gt=0)
    energy: bool = True  # measure energy where a counter exists (NVML / RAPL); else recorded as none
    energy_window_s: float = Field(1.0, gt=0)
    decode_tokens: int = Field(16, ge=1)  # decode mode: tokens generated per timed call
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

    steps: int = Field(1000, ge=1)  # optimiser steps per run (fewer when the target is reached)
    batch_size: int = Field(64, ge=1)  # examples per step (a task cell's ``batch``)
    lr: Union[float, list[float]] = 1e-3  # a grid: every value is trained, the best is reported
    seeds: int = Field(1, ge=1)  # runs per lr, with seeds seed, seed+1, ...: mean and spread
    weight_decay: float = Field(0.1, ge=0)
    warmup_frac: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 = off
    eval_every: int = Field(100, ge=1)
    target: float | None = None  # early stop when the held-out score passes it
    train_examples: int = Field(20_000, ge=1)
    test_examples: int = Field(500, ge=1)
    eval_batch: int = Field(256, ge=1)
    max_train_s: float | None = Field(None, gt=0)  # wall-time cap per (lr, seed) run: evaluate and stop there
    ffn: str = "auto"  # auto (the task's default: none for recall tasks), none, swiglu, moe

    @field_validator("lr")
    @classmethod
    def _lr(cls, v):
        vals = v if isinstance(v, list) else [v]
        if not vals or any(x <= 0 for x in vals):
            raise ValueError("lr must be a positive number or a non-empty list of them")
        return v

    @field_validator("ffn")
    @classmethod
    def _ffn(cls, v: str) -> str:
        if v not in ("auto", "none", "swiglu", "moe"):
            raise ValueError(f"unknown ffn {v!r}; allowed: auto, none, swiglu, moe")
        return v

    def lrs(self) -> list[float]:
        return [float(x) for x in (self.lr if isinstance(self.lr, list) else [self.lr])]


class CellValues(_Strict):
    """The value of every cell field (defaults) — one scalar each."""

    arch: str | None = None
    backend: str = "auto"
    mode: str = "fwd"
    level: str = "mixer"  # mixer: the token mixer alone; model: a small LM (embedding, blocks, head)
    n_layers: int = Field(2, ge=1)  # model level: blocks of this mixer (hybrids bring their own)
    vocab_size: int = Field(256, ge=2)  # model level
    dtype: str = "float32"
    device: str = "cpu"
    batch: int = Field(1, ge=1)
    seq_len: int = Field(1024, ge=1)
    d_model: int = Field(256, ge=1)
    n_heads: int = Field(4, ge=1)
    head_dim: int | None = Field(None, ge=1)
    n_kv_heads: int | None = Field(None, ge=1)
    chunk_size: int = Field(64, ge=1)
    d_state: int | None = Field(None, ge=1)
    expand: int = Field(2, ge=1)
    conv_size: int = Field(4, ge=0)
    window: int | None = Field(None, ge=1)
    block_size: int = Field(64, ge=1)
    block_count: int = Field(16, ge=1)
    threads: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    task: str | None = None  # mode task: which task (archbench.tasks), e.g. mqar
    num_kv_pairs: int | None = Field(None, ge=1)  # mqar: key-value pairs per example

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


class _SweepBase(_Strict):
    def values(self, field: str) -> list[Any] | None:
        v = getattr(self, field)
        if v is None:
            return None
        return v if isinstance(v, list) else [v]


def _sweep_type(field: str) -> Any:
    """A sweep field holds the scalar type of the cell field or a list of it."""
    ann = CellValues.model_fields[field].annotation
    scalar = next((a for a in getattr(ann, "__args__", (ann,)) if a is not type(None)), ann)
    return Union[scalar, list[scalar], None]


Sweep = create_model(
    "Sweep",
    __base__=_SweepBase,
    arch=(Union[str, list[str]], ...),
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
    timeout_s: float
    stop_after_oom: bool = False
    measure: MeasureConfig
    train: TrainConfig | None = None  # task cells only
    task_args: dict[str, dict[str, Any]] | None = None  # task cells only
    backend_choice: str | None = None  # backend auto: why the backends before the chosen one were passed over

    @property
    def key(self) -> str:
        ident = self.identity()
        if self.mode == "task":  # how it trains defines what a task cell measures
            train = self.train.model_dump() if self.train else None
            if train and train.get("max_train_s") is None:
                del train["max_train_s"]  # unset, it leaves the keys of earlier runs as they were
            ident["train"] = train
            ident["task_args"] = self.task_args or {}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        level = f" [model L={self.n_layers}]" if self.level == "model" else ""
        if self.mode == "task":
            kv = f" kv={self.num_kv_pairs}" if self.num_kv_pairs else ""
            return f"{self.arch}/{self.backend} task {self.task}{kv} d={self.d_model} L={self.n_layers} T={self.seq_len}"
        return f"{self.arch}/{self.backend}{level} {self.mode} {self.dtype} d={self.d_model} B={self.batch} T={self.seq_len}"

    def identity(self) -> dict:
        return {f: getattr(self, f) for f in KEY_FIELDS if not (f in TASK_FIELDS and getattr(self, f) is None)}

    def without_seq_len(self) -> tuple:
        """The cell's identity minus its length: cells of one scaling curve share it."""
        return tuple((f, v) for f, v in self.identity().items() if f != "seq_len")


class Suite:
    """A validated suite: its model, source path, and expanded cells."""

    def __init__(self, model: SuiteModel, path: str | None = None, raw: dict | None = None):
        self.model = model
        self.path = path
        self.raw = raw or {}

    @property
    def name(self) -> str:
        return self.model.name

    def cells(self) -> list[Cell]:
        return expand(self.model, source=self.path or "<suite>")


# ---- loading and errors -----------------------------------------------------------------

_ALLOWED = {
    (): list(SuiteModel.model_fields),
    ("defaults",): list(Defaults.model_fields),
    ("defaults", "measure"): list(MeasureConfig.model_fields),
    ("defaults", "train"): list(TrainConfig.model_fields),
    ("sweep",): list(Sweep.model_fields),
    ("exclude",): list(ExcludeRule.model_fields),
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
            part in {"int", "str", "float", "Range", "none", "function-after"}
            or part.startswith(("list[", "union[", "function-", "constrained-"))
        ):
            continue
        keep.append(part)
    return tuple(keep)


_FRIENDLY = {
    "greater_than_equal": lambda c: f"must be >= {c.get('ge')}",
    "greater_than": lambda c: f"must be > {c.get('gt')}",
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
    return "\n".join(seen.values())


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


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"suite file not found: {p} (see suites/ for examples)")
    try:
        raw = yaml.safe_load(p.read_text())
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
    d = model.defaults
    axes: list[list[Any]] = []
    for i, f in enumerate(CELL_FIELDS):
        vals = model.sweep.values(f)
        if vals is None:
            vals = [getattr(d, f)]
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
        task_extra = _task_values(values, d, source)
        if any(rule.matches(values) for rule in model.exclude):
            continue
        _check_dims(values, source)
        cell = Cell(**values, timeout_s=d.timeout_s, stop_after_oom=d.stop_after_oom, measure=d.measure,
                    backend_choice=choice, **task_extra)  # fmt: skip
        cells.setdefault(cell.key, cell)
    if not cells:
        raise SuiteError(f"{source}: the sweep expands to no cells (every cell is excluded); loosen 'exclude'")
    return list(cells.values())


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


def _task_values(values: dict, d: Defaults, source: str) -> dict:
    """Task cells: a task is required, the batch is the training batch, and the task's own
    options are checked now (so an impossible MQAR shape fails before anything runs).
    Other modes: the task fields are cleared (a suite may sweep ``mode: [decode, task]``)."""
    if values["mode"] != "task":
        values["task"] = values["num_kv_pairs"] = None
        return {}
    if values["task"] is None:
        raise SuiteError(f"{source}: mode task needs a task (sweep.task or defaults.task), e.g. task: mqar")
    values["batch"] = d.train.batch_size
    from archbench.tasks import TaskError
    from archbench.tasks.cell import task_from_cell

    try:
        task_from_cell({**values, "task_args": d.task_args})
    except TaskError as e:
        raise SuiteError(f"{source}: cell {values['arch']} task {values['task']} T={values['seq_len']}: {e}") from None
    return {"train": d.train, "task_args": dict(d.task_args)}


def _mixer_config(v: dict) -> MixerConfig | None:
    """The cell's mixer config (``auto`` checks it against each kernel's shape limits), or None."""
    try:
        return _make_config(v)
    except ValueError:
        return None


def _make_config(v: dict) -> MixerConfig:
    known = {f.name for f in dataclasses.fields(MixerConfig)}
    return MixerConfig(**{k: x for k, x in v.items() if k in known and x is not None})


def _check_dims(v: dict, source: str) -> None:
    """Refuse impossible shapes (d_model not divisible by n_heads, ...) before anything runs."""
    try:
        _make_config(v)
    except ValueError as e:
        raise SuiteError(f"{source}: cell {v['arch']} T={v['seq_len']}: {e}") from None
