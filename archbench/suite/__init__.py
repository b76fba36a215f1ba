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

Recipe cells (``mode: recipe``, ``archbench.suite.recipes``) run a conversion or distillation recipe
instead of timing an architecture; they sit in a sweep of their own, with ``recipe`` as the axis and
each recipe's settings in ``defaults.recipe_args``.

The package: ``models`` (the suite file's pydantic models), ``cell`` (a cell and its key),
``errors`` (one-line messages from validation errors), ``expand`` and ``recipes`` (the sweep into
cells), ``load`` (YAML, overrides, ``Suite``).
"""

from archbench.fields import CELL_FIELDS, KEYED_ALWAYS, MEASURE_KEY_FIELDS
from archbench.schema import BACKWARD_MODES, DTYPES, LEVELS, MODES, QUALITY_MODES
from archbench.suite.cell import Cell
from archbench.suite.expand import expand, expand_keyed
from archbench.suite.load import DuplicateKey, Suite, load_suite, parse_suite, set_override
from archbench.suite.models import (
    DEVICE_RE,
    KEY_FIELDS,
    MAX_BATCH,
    MAX_DIM,
    MAX_SEQ_LEN,
    ArchSelector,
    CellValues,
    Defaults,
    ExcludeRule,
    MeasureConfig,
    QualityConfig,
    Range,
    SlurmConfig,
    SuiteError,
    SuiteModel,
    Sweep,
    TrainConfig,
)

__all__ = [
    "BACKWARD_MODES", "CELL_FIELDS", "DEVICE_RE", "DTYPES", "KEYED_ALWAYS", "KEY_FIELDS", "LEVELS", "MAX_BATCH", "MAX_DIM",
    "MAX_SEQ_LEN", "MEASURE_KEY_FIELDS", "MODES", "QUALITY_MODES", "ArchSelector", "Cell", "CellValues", "Defaults",
    "DuplicateKey", "ExcludeRule", "MeasureConfig", "QualityConfig", "Range", "SlurmConfig", "Suite", "SuiteError",
    "SuiteModel", "Sweep", "TrainConfig", "expand", "expand_keyed", "load_suite", "parse_suite", "set_override",
]  # fmt: skip
