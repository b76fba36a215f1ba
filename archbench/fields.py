"""The fields that identify a cell, in one place with no heavy imports: the suite expands and
hashes them, and comparing results matches rows by them without importing the model code."""

# Cell fields, in the order they expand (seq_len innermost, so one arch's lengths run in order).
CELL_FIELDS = (
    "arch", "backend", "level", "mode", "dtype", "device", "batch", "n_layers", "vocab_size", "d_model", "n_heads",
    "head_dim", "n_kv_heads", "chunk_size", "d_state", "expand", "conv_size", "window",
    "block_size", "block_count", "threads", "seed", "task", "num_kv_pairs", "seq_len",
)  # fmt: skip
# Fields only task cells use: left out of other cells' keys (so those keys predate tasks).
TASK_FIELDS = ("task", "num_kv_pairs")
