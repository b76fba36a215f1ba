"""The fields that identify a cell, in one place with no heavy imports: the suite expands and
hashes them, and comparing results matches rows by them without importing the model code."""

# Cell fields, in the order they expand (seq_len innermost, so one arch's lengths run in order).
CELL_FIELDS = (
    "arch", "backend", "level", "mode", "dtype", "device", "batch", "n_layers", "vocab_size", "d_model", "n_heads",
    "head_dim", "n_kv_heads", "chunk_size", "d_state", "expand", "conv_size", "window",
    "block_size", "block_count", "threads", "seed", "task", "num_kv_pairs", "short_conv", "model", "trust_remote_code",
    "eval_task", "recipe", "seq_len",
)  # fmt: skip
# Fields only task cells use: left out of other cells' keys (so those keys predate tasks).
TASK_FIELDS = ("task", "num_kv_pairs")
# Fields only recipe cells use: left out of other cells' keys.
RECIPE_FIELDS = ("recipe",)
# The cell fields a recipe cell has (a recipe builds its own models: arch, backend and shapes do not
# apply); its key hashes these (``threads`` when set) and its recipe's settings.
RECIPE_CELL_FIELDS = ("mode", "recipe", "device", "seed", "threads")
# Fields left out of a key while unset (None), so the keys of cells that do not use them stay as they were.
OPTIONAL_FIELDS = ("short_conv",)
# The cell fields of the first keyed release: always hashed. A field added to CELL_FIELDS since is
# hashed only when set away from its default, so the keys of cells that leave it alone never change.
KEYED_ALWAYS = (
    "arch", "backend", "level", "mode", "dtype", "device", "batch", "n_layers", "vocab_size", "d_model", "n_heads",
    "head_dim", "n_kv_heads", "chunk_size", "d_state", "expand", "conv_size", "window",
    "block_size", "block_count", "threads", "seed", "seq_len",
)  # fmt: skip
# measure.* switches that change the number a cell measures, hashed when away from their default.
# The other measure settings (warm-up, repeats, budget, target spread, energy and roofline
# sampling) change how long a cell is measured or which columns it gets, never what is measured.
MEASURE_KEY_FIELDS = ("cuda_graph", "decode_tokens", "flush_l2", "pin_cpus")
MEASURE_RUN_SETTINGS = (
    "warmup", "warmup_s", "min_repeats", "max_repeats", "budget_s", "target_rel_iqr", "energy", "energy_window_s", "roofline",
)  # fmt: skip
