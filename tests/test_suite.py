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
    ident = {**cell.identity(), "train": {k: v for k, v in cell.train.model_dump().items() if k not in ("max_train_s", "epochs")}, "task_args": {}}
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


# ---- cell identity ----------------------------------------------------------------------


def _base_cell(tmp_path, mode="decode"):
    text = f"name: k\ndefaults: {{d_model: 64, n_heads: 4}}\nsweep: {{arch: softmax_attention, backend: sdpa, mode: {mode}, seq_len: 64}}\n"
    return load_suite(write(tmp_path, text, f"k-{mode}.yaml")).cells()[0]


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    return 3 if value is None else None


def test_every_field_that_changes_the_measurement_changes_the_key(tmp_path):
    """Two cells that differ in any cell field, or in a measurement switch where it applies, never
    share a key; run settings (timeouts, budgets, repeats, warm-up) never change it."""
    from archbench.fields import CELL_FIELDS, MEASURE_KEY_FIELDS, MEASURE_RUN_SETTINGS
    from archbench.suite import MeasureConfig

    base = _base_cell(tmp_path)
    keys = {base.key}
    for f in CELL_FIELDS:  # every cell field, those added later included
        key = base.model_copy(update={f: _other(getattr(base, f))}).key
        assert key not in keys, f"changing {f} does not change the key"
        keys.add(key)
    assert set(MEASURE_KEY_FIELDS) | set(MEASURE_RUN_SETTINGS) == set(MeasureConfig.model_fields), "classify every measure field"
    gpu = base.model_copy(update={"device": "cuda"})
    switched = {"cuda_graph": True, "decode_tokens": 32, "flush_l2": False}
    for f, v in switched.items():
        key = gpu.model_copy(update={"measure": gpu.measure.model_copy(update={f: v})}).key
        assert key != gpu.key and key not in keys, f"measure.{f} does not change the key"
        keys.add(key)
    graph_decode = gpu.model_copy(update={"measure": gpu.measure.model_copy(update={"cuda_graph": "decode"})})
    assert graph_decode.key == gpu.model_copy(update={"measure": gpu.measure.model_copy(update={"cuda_graph": True})}).key
    pinned = base.model_copy(update={"measure": base.measure.model_copy(update={"pin_cpus": True})})
    assert pinned.key != base.key
    settings = {"warmup": 9, "warmup_s": 1.0, "min_repeats": 7, "max_repeats": 9, "budget_s": 9.0, "target_rel_iqr": 0.5,
                "energy": False, "energy_window_s": 3.0, "roofline": False}  # fmt: skip
    assert set(settings) == set(MEASURE_RUN_SETTINGS)
    for cell in (base, gpu):
        for f, v in settings.items():
            assert cell.model_copy(update={"measure": cell.measure.model_copy(update={f: v})}).key == cell.key, f
        assert cell.model_copy(update={"timeout_s": 1.0, "stop_after_oom": True}).key == cell.key


def test_switches_key_only_the_cells_they_change(tmp_path):
    """A switch that does not apply to a cell (decode tokens of a forward cell, CUDA graphs or the
    L2 flush on a CPU, graphs 'decode' on a prefill cell) leaves its key as it was."""
    fwd = _base_cell(tmp_path, mode="fwd")
    for f, v in {"decode_tokens": 64, "cuda_graph": True, "flush_l2": False}.items():
        assert fwd.model_copy(update={"measure": fwd.measure.model_copy(update={f: v})}).key == fwd.key, f
    gpu_fwd = fwd.model_copy(update={"device": "cuda"})
    assert gpu_fwd.model_copy(update={"measure": gpu_fwd.measure.model_copy(update={"cuda_graph": "decode"})}).key == gpu_fwd.key
    assert gpu_fwd.model_copy(update={"measure": gpu_fwd.measure.model_copy(update={"pin_cpus": True})}).key == gpu_fwd.key


def test_suite_measure_switches_reach_the_key(tmp_path):
    text = "name: g\ndefaults: {device: cuda, measure: {cuda_graph: decode}}\nsweep: {arch: softmax_attention, backend: sdpa, mode: [fwd, decode], seq_len: 64}\n"
    eager = text.replace("cuda_graph: decode", "cuda_graph: false")
    a = {c.mode: c.key for c in load_suite(write(tmp_path, text, "a.yaml")).cells()}
    b = {c.mode: c.key for c in load_suite(write(tmp_path, eager, "b.yaml")).cells()}
    assert a["fwd"] == b["fwd"] and a["decode"] != b["decode"]  # eager and graph-replayed decode rows never collide


# ---- strict input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expect",
    [
        ("name: a\nsweep:\n  arch: softmax_attention\n  seq_len: [8]\n  seq_len: [16]\n", "line 5: sweep.seq_len: key given twice (first on line 4)"),
        ("name: a\ndefaults:\n  measure: {warmup: 1, warmup: 2}\nsweep: {arch: softmax_attention}\n", "defaults.measure.warmup: key given twice"),
        ("name: a\nexclude:\n  - {arch: x}\n  - {arch: x, arch: y}\nsweep: {arch: softmax_attention}\n", "exclude[1].arch: key given twice"),
        ("name: a\nsweep: {arch: softmax_attention, seq_len: true}", "sweep.seq_len: must be an integer (got True)"),
        ("name: a\nsweep: {arch: softmax_attention, seq_len: [8, '64']}", "sweep.seq_len[1]: must be an integer (got '64')"),
        ("name: a\nsweep: {arch: softmax_attention, seq_len: 1180591620717411303424}", "sweep.seq_len: must be <= 16777216"),
        ("name: a\nsweep: {arch: softmax_attention, seq_len: 16777217}", "must be <= 16777216"),
        ("name: a\ndefaults: {batch: 1048577}\nsweep: {arch: softmax_attention}", "defaults.batch: must be <= 1048576"),
        ("name: a\ndefaults: {d_model: true}\nsweep: {arch: softmax_attention}", "defaults.d_model: must be an integer"),
        ("name: a\ndefaults: {measure: {decode_tokens: '8'}}\nsweep: {arch: softmax_attention}", "defaults.measure.decode_tokens: must be an integer"),
        ("name: a\ndefaults: {train: {steps: 1.5}}\nsweep: {arch: softmax_attention}", "defaults.train.steps: must be an integer"),
        ("name: a\narch_defaults: {softmax_attention: {n_kv_heads: true}}\nsweep: {arch: softmax_attention}", "arch_defaults.softmax_attention.n_kv_heads"),
    ],
)
def test_strict_input(tmp_path, text, expect):
    assert expect in error_of(tmp_path, text)


def test_a_plugin_named_by_a_path_relative_to_the_suite(tmp_path):
    (tmp_path / "archs").mkdir()
    plugin = tmp_path / "archs" / "mine.py"
    plugin.write_text(
        "from archbench import registry\n"
        "if 'path_plugin_arch' not in registry.names():\n"
        "    registry.register(registry.get('softmax_attention').__class__(**{**vars(registry.get('softmax_attention')), 'name': 'path_plugin_arch'}))\n"
    )
    suite = load_suite(write(tmp_path, "name: a\nplugins: [archs/mine.py]\nsweep: {arch: path_plugin_arch, backend: sdpa, seq_len: 8}\n"))
    assert {c.arch for c in suite.cells()} == {"path_plugin_arch"}
    assert suite.model.plugins == [str(plugin)]  # absolute: workers import the same file from any directory
    assert "plugin file not found" in error_of(tmp_path, "name: a\nplugins: [archs/missing.py]\nsweep: {arch: softmax_attention}\n")


# ---- architectures chosen by taxonomy -------------------------------------------------------------


def _archs(tmp_path, arch_yaml):
    from archbench import registry  # noqa: F401

    suite = write(tmp_path, f"""
        name: sel
        defaults: {{device: cpu, seq_len: 64, d_model: 32, n_heads: 2}}
        sweep:
          arch: {arch_yaml}
          backend: reference
          mode: fwd
    """)
    return sorted({c.arch for c in load_suite(suite).cells()})


def test_arch_all_is_the_mixer_catalogue(tmp_path):
    from archbench import registry

    want = sorted(s.name for s in registry.builtin_specs() if s.level == "mixer")
    assert _archs(tmp_path, "all") == want and "hf_llama" not in want


def test_arch_family_selector_with_exclude_and_include(tmp_path):
    from archbench import registry

    ssm = sorted(s.name for s in registry.builtin_specs() if s.family.startswith("ssm/") and s.level == "mixer")
    assert "mamba" in ssm and len(ssm) > 1
    assert _archs(tmp_path, "{family: ssm}") == ssm
    got = _archs(tmp_path, "{family: [ssm, full/softmax], exclude: [mamba], include: [nsa]}")
    assert "mamba" not in got and "softmax_attention" in got and "nsa" in got and set(ssm) - {"mamba"} <= set(got)


def test_arch_selector_errors_are_one_line(tmp_path):
    assert "unknown architecture 'mamba9'" in error_of(tmp_path, """
        name: sel
        sweep: {arch: {family: ssm, exclude: [mamba9]}, mode: fwd}
    """)
    assert "sweep.arch" in error_of(tmp_path, """
        name: sel
        sweep: {arch: {family: no_such_family}, mode: fwd}
    """)
    assert "sweep.arch" in error_of(tmp_path, """
        name: sel
        sweep: {arch: {familly: ssm}, mode: fwd}
    """)
