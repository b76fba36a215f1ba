"""Reading a suite: YAML with duplicate keys refused, ``--set`` overrides, validation and the
expanded ``Suite``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from archbench import registry
from archbench.suite.cell import Cell
from archbench.suite.errors import first_errors
from archbench.suite.expand import expand_keyed
from archbench.suite.models import SuiteError, SuiteModel


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
        raise SuiteError(first_errors(source, e)) from None
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
