"""Suite validation (one-line errors naming file, key path and what is allowed),
sweep expansion, exclusion, overrides and stable cell keys."""

import textwrap

import pytest

from archbench.suite import SuiteError, load_suite

GOOD = """
name: t
defaults: {device: cpu, d_model: 64, n_heads: 4}
sweep:
  arch: [softmax_attention, linear_attention]
  backend: [naive, sdpa, chunked]
  mode: [fwd, fwd_bwd]
  seq_len: [64, 128]
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(SuiteError) as e:
        load_suite(p)
    msg = str(e.value)
    assert "\n" not in msg, f"error should be one line: {msg!r}"
    assert str(p) in msg, "error should name the file"
    return msg


def test_expansion_is_the_product_minus_missing_backends(tmp_path):
    cells = load_suite(write(tmp_path, GOOD)).cells()
    # softmax: naive, sdpa; linear: chunked -> 3 (arch, backend) pairs x 2 modes x 2 lengths
    assert len(cells) == 12
    assert {(c.arch, c.backend) for c in cells} == {
        ("softmax_attention", "naive"),
        ("softmax_attention", "sdpa"),
        ("linear_attention", "chunked"),
    }
    assert len({c.key for c in cells}) == 12
    # seq_len is the innermost axis
    assert [c.seq_len for c in cells[:2]] == [64, 128]


def test_keys_are_stable_and_identify_the_measurement(tmp_path):
    a = {c.label: c.key for c in load_suite(write(tmp_path, GOOD)).cells()}
    reordered = GOOD.replace("[fwd, fwd_bwd]", "[fwd_bwd, fwd]").replace("defaults: {", "defaults: {timeout_s: 5, ")
    b = {c.label: c.key for c in load_suite(write(tmp_path, reordered, "r.yaml")).cells()}
    assert a == b  # order of the sweep and run settings (timeout) do not change keys
    changed = {c.label: c.key for c in load_suite(write(tmp_path, GOOD.replace("seed", "x").replace("d_model: 64", "d_model: 128"), "c.yaml")).cells()}
    assert set(changed.values()).isdisjoint(a.values())  # model dims are part of the key
    assert all(len(k) == 16 and int(k, 16) >= 0 for k in a.values())


def test_auto_backend_is_resolved(tmp_path):
    cells = load_suite(write(tmp_path, GOOD.replace("[naive, sdpa, chunked]", "auto"))).cells()
    assert {(c.arch, c.backend) for c in cells} == {("softmax_attention", "sdpa"), ("linear_attention", "chunked")}


def test_auto_records_why_it_passed_backends_over(tmp_path):
    text = GOOD.replace("[softmax_attention, linear_attention]", "[sliding_window_attention]").replace(
        "[naive, sdpa, chunked]", "auto")
    cells = {c.mode: c for c in load_suite(write(tmp_path, text)).cells() if c.seq_len == 64}
    assert cells["fwd"].backend == "flex" and cells["fwd"].backend_choice.startswith("flash_attn: ")
    assert cells["fwd_bwd"].backend == "sdpa"  # FlexAttention runs forward only on a CPU
    assert "flex: FlexAttention has no backward on CPU" in cells["fwd_bwd"].backend_choice
    explicit = load_suite(write(tmp_path, GOOD, "g.yaml")).cells()
    assert all(c.backend_choice is None for c in explicit)  # nothing was chosen for them
    assert "backend_choice" not in cells["fwd"].identity()  # not part of the key


def test_exclude_rules(tmp_path):
    text = GOOD + "exclude:\n  - {backend: naive, seq_len: {min: 100}}\n  - {arch: linear_attention, mode: fwd_bwd}\n"
    cells = load_suite(write(tmp_path, text)).cells()
    assert not any(c.backend == "naive" and c.seq_len >= 100 for c in cells)
    assert not any(c.arch == "linear_attention" and c.mode == "fwd_bwd" for c in cells)
    assert len(cells) == 12 - 2 - 2


def test_arch_defaults_replace_the_defaults_for_one_arch(tmp_path):
    text = GOOD + "arch_defaults:\n  softmax_attention: {n_kv_heads: 1, window: 16}\n"
    cells = load_suite(write(tmp_path, text)).cells()
    assert {(c.n_kv_heads, c.window) for c in cells if c.arch == "softmax_attention"} == {(1, 16)}
    assert {(c.n_kv_heads, c.window) for c in cells if c.arch == "linear_attention"} == {(None, None)}
    plain = {c.label: c.key for c in load_suite(write(tmp_path, GOOD, "g.yaml")).cells()}
    assert {c.key for c in cells if c.arch == "linear_attention"} <= set(plain.values())
    assert not {c.key for c in cells if c.arch == "softmax_attention"} & set(plain.values())


@pytest.mark.parametrize(
    "extra,expect",
    [
        ("  mamba9: {n_kv_heads: 1}", "arch_defaults.mamba9: unknown architecture"),
        ("  softmax_attention: {colour: red}", "arch_defaults.softmax_attention.colour: not a cell field; allowed:"),
        ("  softmax_attention: {seq_len: 32}", "seq_len is also swept"),
        ("  softmax_attention: {n_kv_heads: -1}", "arch_defaults.softmax_attention.n_kv_heads:"),
    ],
)
def test_arch_defaults_errors(tmp_path, extra, expect):
    assert expect in error_of(tmp_path, GOOD + "arch_defaults:\n" + extra + "\n")


def test_everything_excluded_is_an_error(tmp_path):
    msg = error_of(tmp_path, GOOD + "exclude:\n  - {device: cpu}\n")
    assert "no cells" in msg


def test_overrides(tmp_path):
    p = write(tmp_path, GOOD)
    cells = load_suite(p, ["sweep.seq_len=[32]", "defaults.batch=3"]).cells()
    assert {c.seq_len for c in cells} == {32} and {c.batch for c in cells} == {3}
    with pytest.raises(SuiteError, match="KEY=VALUE"):
        load_suite(p, ["sweep.seq_len"])


@pytest.mark.parametrize(
    "text,expect",
    [
        ("name: a\nsweep: {arch: softmax_attention, seq_lenn: [1]}", ["sweep.seq_lenn", "unknown key", "allowed:", "seq_len"]),
        ("name: a\nsweep: {arch: [softmax_attention, mamba9]}", ["sweep.arch[1]", "mamba9", "known: ", "softmax_attention"]),
        ("name: a\nsweep: {arch: softmax_attention, batch: [2, -1]}", ["sweep.batch[1]", ">= 1", "-1"]),
        ("name: a\ndefaults: {batch: 0}\nsweep: {arch: softmax_attention}", ["defaults.batch", ">= 1"]),
        ("name: a\ndefaults: {measure: {warmpu: 1}}\nsweep: {arch: softmax_attention}", ["defaults.measure.warmpu", "allowed: warmup"]),
        ("name: a\nsweep: {arch: softmax_attention, mode: [fwd, decodex]}", ["sweep.mode[1]", "decodex", "allowed: fwd, fwd_bwd"]),
        ("name: a\nsweep: {arch: softmax_attention, dtype: fp8}", ["sweep.dtype", "fp8", "float32"]),
        ("name: a\nsweep: {arch: softmax_attention, device: tpu}", ["sweep.device", "tpu", "cpu, cuda"]),
        ("name: a\nsweep: {arch: softmax_attention, backend: fla}", ["sweep.backend", "fla", "allowed: auto"]),
        ("name: a\nsweep: {arch: linear_attention, backend: naive}", ["sweep.backend", "naive", "allowed: auto, reference, chunked"]),
        ("name: a\nsweep: {arch: softmax_attention, seq_len: 2.5}", ["sweep.seq_len", "integer"]),
        ("name: a\nsweep: {arch: softmax_attention, d_model: 100, n_heads: 3}", ["d_model (100)", "n_heads (3)"]),
        ("name: a\nsweep: {arch: softmax_attention}\nexclude: [{seq: 1}]", ["exclude[0].seq", "unknown key"]),
        ("name: a\nsweep: {arch: softmax_attention}\nsweeps: {}", ["sweeps", "unknown key", "allowed: name"]),
        ("sweep: {arch: softmax_attention}", ["name", "missing"]),
        ("name: a\n", ["sweep", "missing"]),
        ("- 1\n", ["YAML mapping"]),
        ("name: a\nsweep: {arch: [softmax_attention\n", ["invalid YAML"]),
        ("name: a\nplugins: [no_such_module_xyz]\nsweep: {arch: softmax_attention}", ["plugins", "no_such_module_xyz"]),
    ],
)
def test_validation_errors_are_one_line_and_helpful(tmp_path, text, expect):
    msg = error_of(tmp_path, text)
    for part in expect:
        assert part in msg, f"{part!r} not in {msg!r}"


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "nope.yaml")


def test_plugin_archs_are_accepted(tmp_path):
    text = "name: a\nplugins: [faulty_mixers]\nsweep: {arch: [test_raise, softmax_attention]}"
    cells = load_suite(write(tmp_path, text)).cells()
    assert {c.arch for c in cells} == {"test_raise", "softmax_attention"}


@pytest.mark.parametrize(
    "path",
    ["suites/smoke.yaml", "suites/long-context.yaml", "suites/zoo.yaml", "suites/zoo-speed.yaml",
     "suites/decode.yaml", "suites/training.yaml"],
)  # fmt: skip
def test_shipped_suites_validate(path):
    from pathlib import Path

    suite = load_suite(Path(__file__).resolve().parent.parent / path)
    assert suite.cells()


def test_reference_backend_keyword(tmp_path):
    cells = load_suite(write(tmp_path, GOOD.replace("[naive, sdpa, chunked]", "reference"))).cells()
    assert {(c.arch, c.backend) for c in cells} == {("softmax_attention", "naive"), ("linear_attention", "chunked")}


# ---- task cells -----------------------------------------------------------------------

TASKS = """
name: t
defaults: {device: cpu, d_model: 32, n_heads: 2, vocab_size: 256, task: mqar, train: {steps: 10, batch_size: 16, lr: [1e-3, 3e-3]}}
sweep:
  arch: [softmax_attention, sliding_window_attention]
  mode: [decode, task]
  batch: [1, 4]
  num_kv_pairs: [2, 4]
  seq_len: [64]
"""


def test_task_cells_take_train_batch_and_drop_task_fields_elsewhere(tmp_path):
    cells = load_suite(write(tmp_path, TASKS)).cells()
    task = [c for c in cells if c.mode == "task"]
    decode = [c for c in cells if c.mode == "decode"]
    # task: 2 archs x 2 kv (batch is the training batch: both batch values collapse)
    assert len(task) == 4 and {c.batch for c in task} == {16} and {c.num_kv_pairs for c in task} == {2, 4}
    # decode: 2 archs x 2 batch (num_kv_pairs means nothing there: both values collapse)
    assert len(decode) == 4 and all(c.task is None and c.num_kv_pairs is None for c in decode)
    assert "task" not in decode[0].identity() and decode[0].train is None
    assert task[0].train.lrs() == [1e-3, 3e-3] and "kv=2" in task[0].label
    # training needs a backward: auto never picks FlexAttention (no CPU backward) for a task cell
    assert {c.backend for c in task if c.arch == "sliding_window_attention"} == {"sdpa"}


def test_task_cell_key_includes_how_it_trains(tmp_path):
    a = {c.label: c.key for c in load_suite(write(tmp_path, TASKS)).cells()}
    b = {c.label: c.key for c in load_suite(write(tmp_path, TASKS.replace("steps: 10", "steps: 20"), "b.yaml")).cells()}
    assert {k for lbl, k in a.items() if " task " in lbl}.isdisjoint(b.values())
    assert {k for lbl, k in a.items() if " decode " in lbl} <= set(b.values()), "other cells keep their keys"


def test_task_time_cap_keys_only_when_set(tmp_path):
    import hashlib
    import json

    cell = next(c for c in load_suite(write(tmp_path, TASKS)).cells() if c.mode == "task")
    ident = {**cell.identity(), "train": {k: v for k, v in cell.train.model_dump().items() if k != "max_train_s"}, "task_args": {}}
    before = hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert cell.key == before, "a suite that does not set max_train_s keeps the keys it had before the field"
    capped = load_suite(write(tmp_path, TASKS.replace("steps: 10", "steps: 10, max_train_s: 60"), "c.yaml")).cells()
    assert cell.key not in {c.key for c in capped if c.mode == "task"}


GOLDEN_KEYS = ["2bdb7dbcb4e5af05", "7afc8cf0004a2c10"]  # computed by the code before task cells existed


def test_keys_do_not_drift():
    """Resume and compare match cells by key across versions: a new cell field must not
    change the keys of cells that do not use it (golden keys from before task cells)."""
    from archbench.suite import parse_suite

    raw = {"name": "g", "defaults": {"d_model": 64, "n_heads": 4}, "sweep": {"arch": "softmax_attention", "backend": "sdpa", "seq_len": [64, 128]}}
    assert [c.key for c in parse_suite(raw).cells()] == GOLDEN_KEYS


@pytest.mark.parametrize(
    "text,expect",
    [
        (TASKS.replace("task: mqar, ", ""), "mode task needs a task"),
        (TASKS.replace("task: mqar", "task: sudoku"), "unknown task 'sudoku'"),
        (TASKS.replace("num_kv_pairs: [2, 4]", "num_kv_pairs: [32]"), "4 \\* num_kv_pairs <= seq_len"),
        (TASKS.replace("vocab_size: 256", "vocab_size: 32"), "vocab_size > seq_len"),
        (TASKS.replace("lr: [1e-3, 3e-3]", "lr: [-1]"), "lr must be a positive"),
        (TASKS.replace("steps: 10", "stepz: 10"), "defaults.train.stepz: unknown key; allowed: steps"),
        (TASKS.replace("batch_size: 16", "batch_size: 16, ffn: mlp"), "unknown ffn 'mlp'"),
    ],
)
def test_task_suite_errors(tmp_path, text, expect):
    import re

    assert re.search(expect, error_of(tmp_path, text))
