"""Results that leave archbench: rows as Parquet, CSV or JSON Lines, and runs pushed to the hub.

A run directory is archbench's own format (``archbench.store``); notebooks, databases and
leaderboards take tables. ``export`` writes the rows of one or more runs as one table:

* one row per cell (the last attempt of each key, as ``store.load``; ``all_rows`` keeps retries),
  the environment flattened into ``env_*`` columns, and ``schema_version`` (``SCHEMA_VERSION``,
  raised whenever a column changes meaning) and ``run_dir`` on every row;
* ``.parquet`` (the optional ``export`` extra, pyarrow): scalar columns keep their types, lists
  of numbers (raw timing samples) stay lists; columns holding mappings or lists of records
  (``implementations``, ``eval_metrics``, a task's ``lr_grid`` ...) are stored as JSON text and
  named in the file's metadata (``archbench.json_columns``), so ``read_export`` gives back the
  same frame, every column and type intact;
* ``.jsonl``: one JSON object per row, nested values as they are;
* ``.csv``: for spreadsheets; nested values as JSON text.

A documented query (``docs/checkpoints.md``) reads either with DuckDB, e.g.::

    SELECT arch, model, mode, seq_len, tokens_per_s, bits_per_byte
    FROM read_parquet('rows.parquet') WHERE status = 'ok' ORDER BY arch, seq_len;

``push`` uploads a run to a Hugging Face dataset repository (the optional ``hub`` extra):
``data/<suite>/<run-id>.parquet`` (or ``.jsonl`` without pyarrow) and the run's ``run.json``
beside it, in one commit, creating the repository if it does not exist.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

SCHEMA_VERSION = 1
FORMATS = (".parquet", ".csv", ".jsonl")
JSON_COLUMNS_KEY = b"archbench.json_columns"
SCHEMA_KEY = b"archbench.schema_version"


class ExportError(ValueError):
    """Bad input to export or push; the message is one line that says what to do."""


def rows_frame(run_paths: Iterable[str | Path], all_rows: bool = False) -> pd.DataFrame:
    """The rows of the runs under ``run_paths`` as one frame, with ``schema_version``."""
    from archbench.store import load

    paths = [str(p) for p in run_paths]
    try:
        df = load(*paths, all_rows=all_rows)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    if df.empty:
        raise ExportError(f"no rows in {', '.join(paths)} (a run directory holds rows.jsonl once a cell has finished)")
    df.insert(0, "schema_version", SCHEMA_VERSION)  # load's attrs (skipped_lines) stay with the frame
    return df


def _is_nested(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list, tuple, str)) for x in v))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def json_columns(df: pd.DataFrame) -> list[str]:
    """Columns Parquet cannot hold as typed columns: mappings, lists of records or strings, or a mix of kinds."""
    out = []
    for col in df.columns:
        if df[col].dtype != object:
            continue
        values = [v for v in df[col] if not _missing(v)]
        kinds = {("list" if isinstance(v, (list, tuple)) else type(v).__name__) for v in values}
        numeric = kinds <= {"int", "float"}
        if any(_is_nested(v) for v in values) or (len(kinds) > 1 and not numeric):
            out.append(col)
    return out


def _encode(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = [None if _missing(v) else json.dumps(v, sort_keys=True, default=str) for v in df[c]]
    return df


def _decode(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    for c in cols:
        if c in df.columns:
            df[c] = [None if _missing(v) else json.loads(v) for v in df[c]]
    return df


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ExportError("Parquet needs pyarrow: pip install 'archbench[export]' (or write .jsonl / .csv)") from None
    return pyarrow


def write(df: pd.DataFrame, out: str | Path) -> Path:
    """Write ``df`` to ``out``; the suffix picks the format (``FORMATS``)."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ExportError(f"cannot tell the format of {out.name!r}; name a file ending in {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".jsonl":
        with open(out, "w", encoding="utf-8") as f:
            for rec in df.to_dict(orient="records"):
                clean = {k: (None if _missing(v) else v) for k, v in rec.items()}
                f.write(json.dumps(clean, default=str) + "\n")
        return out
    cols = json_columns(df)
    if out.suffix == ".csv":
        _encode(df, cols).to_csv(out, index=False)
        return out
    pa = _pyarrow()
    table = pa.Table.from_pandas(_encode(df, cols), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta.update({JSON_COLUMNS_KEY: json.dumps(cols).encode(), SCHEMA_KEY: str(SCHEMA_VERSION).encode()})
    pa.parquet.write_table(table.replace_schema_metadata(meta), out)
    return out


def read_export(path: str | Path) -> pd.DataFrame:
    """A frame back from a file ``write`` made (Parquet: JSON columns decoded, types as written)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    pa = _pyarrow()
    table = pa.parquet.read_table(path)
    cols = json.loads((table.schema.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
    df = table.to_pandas()
    for c in df.columns:  # list columns come back as numpy arrays: lists, as they went in
        if df[c].dtype == object and c not in cols:
            df[c] = [v.tolist() if hasattr(v, "tolist") and not isinstance(v, str) else v for v in df[c]]
    return _decode(df, cols)


def export(run_paths: Iterable[str | Path], out: str | Path, all_rows: bool = False) -> tuple[Path, int]:
    """``archbench export``: the runs' rows to ``out``; returns (path, number of rows)."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise ExportError(f"cannot tell the format of {out.name!r}; name a file ending in {', '.join(FORMATS)}")
    if out.suffix == ".parquet":
        _pyarrow()
    df = rows_frame(run_paths, all_rows=all_rows)
    return write(df, out), len(df)


def push(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None, api=None) -> str:
    """Upload one run to the Hugging Face dataset ``repo_id`` (created if missing); returns its URL."""
    from archbench.store import RUN, find_run_dirs

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"--repo-id {repo_id!r}: name a dataset as ORG/NAME (or USER/NAME)")
    try:
        runs = find_run_dirs([run_dir])
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    if len(runs) != 1:
        raise ExportError(f"{run_dir} holds {len(runs)} runs; push one run directory at a time")
    run = runs[0]
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise ExportError("push needs huggingface_hub: pip install 'archbench[hub]'") from None
        api = HfApi(token=token)
    meta = json.loads((run / RUN).read_text()) if (run / RUN).is_file() else {}
    suite = str(meta.get("suite", {}).get("name") if isinstance(meta.get("suite"), dict) else meta.get("suite") or run.parent.name)
    run_id = str(meta.get("run_id") or run.name)
    try:
        import pyarrow  # noqa: F401

        suffix = ".parquet"
    except ImportError:
        suffix = ".jsonl"
    df = rows_frame([run])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data" / suite
        folder.mkdir(parents=True)
        write(df, folder / f"{run_id}{suffix}")
        if (run / RUN).is_file():
            (folder / f"{run_id}.run.json").write_text((run / RUN).read_text())
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="dataset",
                              commit_message=f"archbench: {suite} run {run_id} ({len(df)} rows)")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - no network, no token, no permission: one line each
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ExportError(f"push to {repo_id} failed ({reason}); check the network and `hf auth login` "
                              "(or HF_TOKEN), or export a file with `archbench export` instead") from None  # fmt: skip
    return f"https://huggingface.co/datasets/{repo_id}"
