"""Expansion: the cartesian product of a suite's sweep over its defaults, minus exclusions and the
(arch, backend) pairs an arch does not implement, each cell checked before anything runs (task
options, checkpoint fields, impossible shapes)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from pydantic import ValidationError

from archbench import registry
from archbench.fields import CELL_FIELDS
from archbench.mixers.base import MixerConfig
from archbench.schema import BACKWARD_MODES, QUALITY_MODES
from archbench.suite.cell import Cell
from archbench.suite.errors import format_error
from archbench.suite.models import CellValues, Defaults, SuiteError, SuiteModel
from archbench.suite.recipes import expand_recipes, recipe_args


def expand(model: SuiteModel, source: str = "<suite>") -> list[Cell]:
    """The cartesian product of the sweep over the defaults, minus exclusions and
    (arch, backend) pairs the arch does not implement; 'auto' backends resolved."""
    return list(expand_keyed(model, source).values())


def expand_keyed(model: SuiteModel, source: str = "<suite>") -> dict[str, Cell]:
    """``expand``'s cells by key, in sweep order."""
    d = model.defaults
    axes = _axes(model, source)
    if "recipe" in axes[CELL_FIELDS.index("mode")]:
        return expand_recipes(model, dict(zip(CELL_FIELDS, axes)), source)
    recipes = [r for r in axes[CELL_FIELDS.index("recipe")] if r is not None]
    if recipes:
        raise SuiteError(f"{source}: recipe {recipes[0]!r} is set but no cell has mode recipe; set mode: recipe or drop recipe")
    recipe_args(d, source)  # checked even where no cell runs them

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


def _axes(model: SuiteModel, source: str) -> list[list[Any]]:
    """Each cell field's values (swept, else the default), in ``CELL_FIELDS`` order, each checked
    with the defaults' validators."""
    d = model.defaults
    axes: list[list[Any]] = []
    for f in CELL_FIELDS:
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
                    raise SuiteError(format_error(source, err)) from None
                raise SuiteError(f"{source}: sweep.{f}: {e}") from None
        axes.append(vals)
    return axes


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
