"""The row contract in one place: the modes, levels, dtypes and statuses every module agrees on,
and what each column of a result row holds (name, type, unit, meaning).

No heavy imports (no torch, no pydantic): the suite, the bench, the store, compare and the
report read these names without loading the model code. ``check_row`` is what the store
checks before it appends a row; ``doc_block`` renders the column table that
``docs/running.md`` carries between its markers (``tests/test_schema.py`` fails when that copy
is stale).
"""

from __future__ import annotations

from dataclasses import dataclass

from archbench.fields import CELL_FIELDS

# ---- names every module agrees on -------------------------------------------------------

MODES = ("fwd", "fwd_bwd", "prefill", "decode", "task", "bpb", "lm_eval", "recipe")
TIMED_MODES = ("fwd", "fwd_bwd", "prefill", "decode")  # rows with the timing, memory, energy and roofline columns
QUALITY_MODES = ("bpb", "lm_eval")  # level checkpoint: a pretrained model's quality (archbench.quality)
BACKWARD_MODES = ("fwd_bwd", "task")  # modes that differentiate: auto picks a backend with a backward
LEVELS = ("mixer", "model", "checkpoint")  # checkpoint: a pretrained model named by `model` (archbench.checkpoint)
DTYPES = ("float32", "bfloat16", "float16")
STATUSES = ("ok", "oom", "timeout", "error", "unsupported", "skipped")  # in display order
FAILED_STATUSES = ("oom", "timeout", "error")  # what the report marks as failures


@dataclass(frozen=True)
class Column:
    """One column of a result row."""

    name: str
    type: str  # JSON-ish: str, int, float, bool, list[...], dict; "| null" when it may be absent or null
    unit: str  # "" for a plain number, a count or text
    meaning: str
    group: str


def _group(group: str, *cols: tuple[str, str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, typ, unit, meaning, group) for name, typ, unit, meaning in cols)


# fmt: off
# one line per column
_CELL_MEANINGS = {
    "arch": ("str | null", "", "the architecture (registry name); null for a recipe cell"),
    "backend": ("str", "", "the backend that ran (`auto` and `reference` resolved)"),
    "level": ("str", "", "mixer (the token mixer alone), model (a small LM around it) or checkpoint (a pretrained model)"),
    "mode": ("str", "", "what was run: " + ", ".join(MODES)),
    "dtype": ("str", "", "parameter and activation dtype: " + ", ".join(DTYPES)),
    "device": ("str", "", "cpu, cuda or cuda:N"),
    "batch": ("int", "sequences", "batch size (task cells: the training batch)"),
    "n_layers": ("int", "", "blocks of the mixer (level model)"),
    "vocab_size": ("int", "tokens", "vocabulary (level model)"),
    "d_model": ("int", "", "model width"),
    "n_heads": ("int", "", "attention / recurrence heads"),
    "head_dim": ("int | null", "", "per-head width (null: d_model / n_heads)"),
    "n_kv_heads": ("int | null", "", "key-value heads for grouped-query attention (null: n_heads)"),
    "chunk_size": ("int", "tokens", "chunk length of chunked kernels"),
    "d_state": ("int | null", "", "state size of SSMs (null: the entry's default)"),
    "expand": ("int", "", "inner-width expansion factor"),
    "conv_size": ("int", "", "short-convolution kernel of the entries that have one"),
    "window": ("int | null", "tokens", "sliding-window size (null: the entry's default)"),
    "block_size": ("int", "tokens", "block size of block-sparse attention"),
    "block_count": ("int", "", "blocks each query attends to (block-sparse attention)"),
    "threads": ("int | null", "", "torch threads asked for (null: torch's default)"),
    "seed": ("int", "", "random seed of weights and inputs"),
    "task": ("str | null", "", "mode task: the task trained (archbench.tasks); absent elsewhere"),
    "num_kv_pairs": ("int | null", "", "mqar: key-value pairs per example; absent elsewhere"),
    "short_conv": ("int | null", "", "one short convolution of this kernel for every recurrent mixer (absent: as published)"),
    "model": ("str | null", "", "level checkpoint: the checkpoint directory or hub id"),
    "trust_remote_code": ("bool", "", "level checkpoint: the checkpoint's own code was run (absent: false)"),
    "eval_task": ("str | null", "", "mode lm_eval: the lm-evaluation-harness task"),
    "recipe": ("str | null", "", "mode recipe: the conversion / distillation recipe (radlads, rad, bridge)"),
    "seq_len": ("int", "tokens", "sequence length T (decode: the context before the timed steps)"),
}

COLUMNS: tuple[Column, ...] = (
    _group(
        "identity",
        ("key", "str", "", "the cell's key: a hash of every field that changes what is measured (resume and compare match rows by it)"),
        ("run_id", "str", "", "the run directory's name"),
        ("suite", "str", "", "the suite's name"),
    )
    + tuple(Column(f, *_CELL_MEANINGS[f], "cell") for f in CELL_FIELDS)
    + _group(
        "outcome",
        ("status", "str", "", "how the cell ended: " + ", ".join(STATUSES)),
        ("error", "str | null", "", "why, when the status is not ok"),
        ("backend_choice", "str | null", "", "backend auto: each faster backend passed over and why (not installed, wrong device or dtype, forward only where the cell trains)"),
        ("timeout_s", "float", "s", "the cell's time limit"),
        ("started_at", "str", "ISO 8601", "when the cell started (UTC)"),
        ("ended_at", "str", "ISO 8601", "when its row was written (UTC)"),
        ("wall_s", "float", "s", "wall time of the cell, worker start and model build included"),
        ("env", "dict", "", "the machine: device name, torch, CUDA, Python, host, CPU, git revision, GPU clocks..."),
        ("code_path", "str", "", "the copy of archbench that measured the cell"),
        ("round", "int | null", "", "--rounds N: this row's round (null on the pooled row)"),
        ("rounds", "int | null", "", "--rounds N: rounds run (pooled row: ok rounds pooled)"),
        ("round_medians_s", "list[float] | null", "s", "pooled row: each round's median"),
    )
    + _group(
        "timing",
        ("time_median_s", "float", "s", "median time of one timed call"),
        ("time_p10_s", "float", "s", "10th percentile of the samples"),
        ("time_p90_s", "float", "s", "90th percentile of the samples"),
        ("time_iqr_s", "float", "s", "interquartile range of the samples"),
        ("time_rel_iqr", "float", "", "IQR / median"),
        ("noisy", "bool", "", "IQR / median above 10%"),
        ("time_mean_s", "float", "s", "mean of the samples"),
        ("time_min_s", "float", "s", "fastest sample"),
        ("repeats", "int", "", "timed calls (samples)"),
        ("warmup_calls", "int", "", "untimed calls before them"),
        ("timer", "str", "", "perf_counter or cuda_events"),
        ("time_samples_s", "list[float]", "s", "every raw sample"),
        ("tokens_per_s", "float", "tokens/s", "tokens processed per second at the median"),
        ("latency_per_token_s", "float | null", "s", "decode: median time per generated token"),
        ("decode_tokens", "int | null", "tokens", "decode: tokens generated per timed call"),
        ("cuda_graph", "bool | null", "", "timed as CUDA-graph replays (present when asked for)"),
        ("cuda_graph_reason", "str | null", "", "why a CUDA-graph capture was not used"),
        ("build_s", "float", "s", "time to build the module"),
        ("threads_used", "int", "", "torch threads the cell ran with"),
        ("cpu_affinity", "list[int] | null", "", "measure.pin_cpus: the cores the worker was pinned to"),
    )
    + _group(
        "memory",
        ("peak_mem_bytes", "int", "bytes", "peak memory of one call above the baseline"),
        ("mem_method", "str", "", "how peak_mem_bytes was measured"),
        ("state_bytes", "int | null", "bytes", "decode state (KV cache or recurrent state) after seq_len tokens"),
        ("params", "int", "", "parameters"),
        ("param_bytes", "int", "bytes", "bytes of the parameters"),
        ("activation_bytes", "int | null", "bytes", "fwd_bwd: what autograd saves for the backward pass"),
        ("activation_method", "str | null", "", "how activation_bytes was measured, or why it failed"),
        ("nvml_process_mem_bytes", "int | null", "bytes", "GPU: what NVML charges the worker (as nvidia-smi)"),
        ("nvml_process_mem_reason", "str | null", "", "GPU: why nvml_process_mem_bytes is missing"),
    )
    + _group(
        "energy",
        ("energy_source", "str", "", "nvml, nvml_power, rapl or none"),
        ("energy_j_per_call", "float | null", "J", "energy of one call"),
        ("energy_j_per_token", "float | null", "J", "energy per token"),
        ("avg_power_w", "float | null", "W", "average power over the energy window"),
        ("energy_calls", "int", "", "calls in the energy window"),
        ("energy_window_s", "float", "s", "length of the energy window"),
        ("energy_reason", "str | null", "", "why there is no energy number"),
    )
    + _group(
        "roofline",
        ("flops", "float | null", "FLOP", "analytic FLOPs of one call"),
        ("achieved_tflops", "float | null", "TFLOP/s", "flops / time_median_s"),
        ("peak_tflops", "float", "TFLOP/s", "this device's measured matmul roof in the cell's dtype (also in run.json under peaks)"),
        ("peak_gbps", "float", "GB/s", "this device's measured copy roof"),
        ("peak_method", "str", "", "how the roofs were measured"),
        ("pct_peak_flops", "float | null", "%", "achieved_tflops over peak_tflops"),
        ("min_bytes", "int", "bytes", "lower bound on the traffic of one call: weights + inputs + outputs, plus the context state for decode, doubled for fwd_bwd"),
        ("achieved_gbps", "float | null", "GB/s", "min_bytes / time_median_s"),
        ("arithmetic_intensity", "float | null", "FLOP/byte", "flops / min_bytes"),
        ("bound", "str | null", "", "compute or memory: which roof the cell sits under"),
        ("pct_of_roof", "float | null", "%", "achieved over the roof at the cell's intensity"),
        ("kernels", "list[str]", "", "the kernels the ops dispatched to (e.g. fla.chunk_gla, torch.sdpa)"),
    )
    + _group(
        "architecture",
        ("family", "str", "", "the entry's taxonomy (e.g. linear/gla)"),
        ("paper", "str", "", "the paper it comes from"),
        ("expected_exponent", "float", "", "asymptotic exponent of training time in T"),
        ("train_complexity", "str", "", "training time complexity"),
        ("decode_complexity", "str", "", "decode time and memory complexity"),
    )
    + _group(
        "task",
        ("task_metric", "str", "", "accuracy or bits_per_byte"),
        ("task_score", "float", "", "the best lr's mean held-out score"),
        ("task_score_std", "float", "", "its spread over seeds"),
        ("task_score_min", "float", "", "worst seed"),
        ("task_score_max", "float", "", "best seed"),
        ("accuracy", "float | null", "", "task_score when the metric is accuracy"),
        ("bits_per_byte", "float | null", "bits/byte", "task_score when the metric is bits per byte; mode bpb: the model's"),
        ("task_by_group", "dict", "", "mean score per group (e.g. per key-value count)"),
        ("task_exact", "float | null", "", "fraction of examples entirely right"),
        ("best_lr", "float", "", "the learning rate of task_score"),
        ("lr_grid", "list[dict]", "", "every lr's scores, steps and divergences"),
        ("n_seeds", "int", "", "seeds per lr"),
        ("train_steps", "float", "", "optimiser steps of the best lr (mean over seeds)"),
        ("tokens_seen", "int", "tokens", "tokens trained on, every run"),
        ("tokens_seen_best", "float", "tokens", "tokens trained on by the best lr (mean over seeds)"),
        ("train_wall_s", "float", "s", "training wall time, every run"),
        ("wall_train_s", "float", "s", "wall time of the whole task cell"),
        ("stopped_early", "int", "", "runs of the best lr that reached the target"),
        ("diverged", "int", "", "runs whose loss stopped being finite"),
        ("out_of_time", "int", "", "runs stopped by train.max_train_s"),
        ("final_loss", "float", "nats", "last training loss of the best lr"),
        ("history", "list[dict]", "", "training curve of the best lr's first seed"),
        ("task_config", "dict", "", "the task's options"),
        ("model_ffn", "str", "", "the feed-forward blocks of the trained model"),
        ("protocol", "dict", "", "how it was trained, to compare with published results"),
        ("comparable_to", "str | null", "", "the published result this row can be set beside"),
    )
    + _group(
        "quality",
        ("bits_per_token", "float", "bits/token", "mode bpb: cross-entropy per token on the text"),
        ("perplexity", "float", "", "mode bpb: per-token perplexity"),
        ("bytes_per_token", "float", "bytes/token", "mode bpb: the text's bytes per token of this tokenizer"),
        ("tokens_scored", "int", "tokens", "mode bpb: tokens predicted"),
        ("text_tokens", "int", "tokens", "mode bpb: tokens of the text"),
        ("windows", "int", "", "mode bpb: windows of seq_len tokens scored"),
        ("eval_metric", "str", "", "mode lm_eval: the headline metric (acc_norm, else acc, ...)"),
        ("eval_score", "float", "", "mode lm_eval: the headline metric's value"),
        ("eval_stderr", "float | null", "", "mode lm_eval: its standard error"),
        ("eval_metrics", "dict", "", "mode lm_eval: every metric"),
        ("eval_stderrs", "dict", "", "mode lm_eval: every metric's standard error"),
        ("eval_limit", "int | float | null", "", "mode lm_eval: documents per task (a fraction below 1)"),
        ("eval_num_fewshot", "int | null", "", "mode lm_eval: few-shot examples"),
        ("eval_n_samples", "int | null", "", "mode lm_eval: documents scored"),
        ("eval_wall_s", "float", "s", "mode lm_eval: wall time of the evaluation"),
        ("lm_eval_version", "str | null", "", "mode lm_eval: lm-evaluation-harness version"),
        ("implementations", "dict", "", "level checkpoint: the path transformers took for each mixer"),
        ("implementation", "str", "", "level checkpoint: the same in one line"),
    )
    + _group(
        "recipe",
        ("recipe_models", "list[dict]", "", "mode recipe: one dict per model (teacher, students, baselines) as the recipe scored it"),
        ("recipe_summary", "dict", "", "mode recipe: the recipe's summary"),
        ("artifacts_dir", "str | null", "", "mode recipe: where the recipe's other files went"),
    )
)

# fmt: on

COLUMN_NAMES = tuple(c.name for c in COLUMNS)
GROUPS = tuple(dict.fromkeys(c.group for c in COLUMNS))
_BY_NAME = {c.name: c for c in COLUMNS}
assert len(_BY_NAME) == len(COLUMNS), "a column is described twice"


def column(name: str) -> Column:
    """The description of column ``name``; a KeyError naming the groups when it has none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no row column {name!r} in archbench.schema (groups: {', '.join(GROUPS)})") from None


def check_row(row: object) -> None:
    """Refuse a row the store cannot keep: a ValueError, one line naming the column. A row needs a
    ``status`` of ``STATUSES``, and a ``key`` (a non-empty string) unless it names the ``recipe``
    or ``model`` it describes (a recipe's rows, hand-written rows)."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a dict (one JSON object), got {type(row).__name__}")
    status = row.get("status")
    if status not in STATUSES:
        got = "missing" if "status" not in row else f"{status!r} is not a status"
        raise ValueError(f"row column 'status': {got}; statuses: {', '.join(STATUSES)}")
    key = row.get("key")
    if "key" in row or not (row.get("recipe") or row.get("model")):
        if not isinstance(key, str) or not key:
            got = "missing" if "key" not in row else f"{key!r} is not a cell key"
            raise ValueError(f"row column 'key': {got}; give the cell's key (rows without one name their recipe or model)")


# ---- the docs' table --------------------------------------------------------------------

BEGIN = "<!-- columns:begin -->"
END = "<!-- columns:end -->"


def _cell(text: str) -> str:
    """One Markdown table cell: pipes escaped, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_table(columns: tuple[Column, ...] = COLUMNS) -> str:
    """The row columns as a Markdown table, in group order."""
    lines = ["| group | column | type | unit | meaning |", "|---|---|---|---|---|"]
    for c in columns:
        lines.append(f"| {c.group} | `{c.name}` | {_cell(c.type)} | {_cell(c.unit)} | {_cell(c.meaning)} |")
    return "\n".join(lines) + "\n"


def doc_block() -> str:
    """The table between its markers, as docs/running.md holds it."""
    note = "<!-- generated by archbench.schema.doc_block(); do not edit by hand -->"
    return f"{BEGIN}\n{note}\n\n{markdown_table()}\n{END}"
