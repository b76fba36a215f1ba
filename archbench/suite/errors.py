"""Pydantic's validation errors as the one-line ``SuiteError`` messages a suite author reads:
the file, the key path, what is wrong and what is allowed."""

from __future__ import annotations

from pydantic import ValidationError

from archbench.suite.models import Defaults, ExcludeRule, MeasureConfig, SlurmConfig, SuiteModel, Sweep, TrainConfig

_ALLOWED = {
    (): list(SuiteModel.model_fields),
    ("defaults",): list(Defaults.model_fields),
    ("defaults", "measure"): list(MeasureConfig.model_fields),
    ("defaults", "train"): list(TrainConfig.model_fields),
    ("sweep",): list(Sweep.model_fields),
    ("exclude",): list(ExcludeRule.model_fields),
    ("slurm",): list(SlurmConfig.model_fields),
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
            part in {"int", "str", "float", "Range", "ArchSelector", "none", "function-after"}
            or part.startswith(("list[", "union[", "function-", "constrained-"))
        ):
            continue
        keep.append(part)
    return tuple(keep)


_FRIENDLY = {
    "greater_than_equal": lambda c: f"must be >= {c.get('ge')}",
    "greater_than": lambda c: f"must be > {c.get('gt')}",
    "less_than_equal": lambda c: f"must be <= {c.get('le')}",
    "int_from_float": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "string_type": lambda c: "must be a string",
    "string_pattern_mismatch": lambda c: "must be letters, digits, '_', '.' or '-' (no spaces)",
    "list_type": lambda c: "must be a list",
}


def format_error(source: str, err: dict) -> str:
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


def first_errors(source: str, e: ValidationError) -> str:
    """One line per distinct location, the most specific error first; pydantic reports one
    error per union branch, so keep a single error for each cleaned location."""
    seen: dict[str, str] = {}
    for err in e.errors():
        loc = _loc_str(_clean_loc(tuple(err.get("loc", ()))))
        line = format_error(source, err)
        if loc not in seen or "Input should be a valid list" in seen[loc]:
            seen[loc] = line
    # a list that failed item by item also fails as a scalar (union branches): keep the item's error
    specific = {loc: line for loc, line in seen.items()
                if not any(o != loc and o.startswith((loc + "[", loc + ".")) for o in seen)}  # fmt: skip
    return "\n".join(specific.values())

