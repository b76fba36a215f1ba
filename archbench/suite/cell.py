"""A cell: one point of the sweep, with the settings of its measurement, and its key.

A cell's key hashes every field that changes what is measured: the cell fields, the measurement
switches of ``MEASURE_KEY_FIELDS`` and, for task cells, how they train (for recipe cells, the
recipe's settings). A switch, or a cell field added after the first keyed release, joins a key only
when it is set away from its default, so cells at the defaults keep the keys they always had.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from archbench.fields import KEYED_ALWAYS, MEASURE_KEY_FIELDS, RECIPE_CELL_FIELDS
from archbench.schema import QUALITY_MODES
from archbench.suite.models import KEY_FIELDS, CellValues, MeasureConfig, QualityConfig, TrainConfig


class Cell(BaseModel):
    """One point of the sweep, with the settings of its measurement."""

    model_config = ConfigDict(frozen=True)

    arch: str | None  # None for a recipe cell: a recipe builds its own models
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
    recipe: str | None = None
    timeout_s: float
    stop_after_oom: bool = False
    measure: MeasureConfig
    train: TrainConfig | None = None  # task cells only
    task_args: dict[str, dict[str, Any]] | None = None  # task cells only
    quality: QualityConfig | None = None  # checkpoint cells in mode bpb / lm_eval only
    recipe_args: dict[str, Any] | None = None  # recipe cells only: their own recipe's settings
    backend_choice: str | None = None  # backend auto: why the backends before the chosen one were passed over

    @property
    def key(self) -> str:
        ident = self.identity()
        switches = self.measure_identity() if self.mode != "recipe" else {}
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
        if self.mode == "recipe":  # its settings define what a recipe cell measures
            ident["recipe_args"] = self.recipe_args or {}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        if self.mode == "recipe":
            return f"recipe {self.recipe} {self.device}" + (f" seed={self.seed}" if self.seed else "")
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
        since (task, num_kv_pairs, short_conv, ...) when set away from its default. A recipe cell's
        are those of ``RECIPE_CELL_FIELDS`` (``threads`` when set): arch and shapes do not apply."""
        if self.mode == "recipe":
            return {f: getattr(self, f) for f in RECIPE_CELL_FIELDS if f != "threads" or self.threads is not None}
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

