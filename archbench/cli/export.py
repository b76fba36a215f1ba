"""``archbench export`` and ``archbench push``: a run's rows as one table, locally or on the Hugging Face hub."""

from __future__ import annotations

import click

from archbench.cli.exits import fail


@click.command(name="export")
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="rows.parquet (needs the export extra: pyarrow), rows.csv or rows.jsonl.")
@click.option("--all-rows", is_flag=True, help="Keep every attempt of a retried cell, not only the last.")
def export_cmd(runs, output, all_rows):
    """Write the rows of one or more runs as one table (Parquet, CSV or JSON Lines).

    Every row gets `schema_version` and `run_dir`, and the environment as `env_*` columns.
    Parquet keeps every column's type (mappings and lists of records as JSON text, named in
    the file's metadata); see docs/checkpoints.md for a DuckDB query over it.

    \b
    archbench export results/checkpoints/20260101-120000 -o rows.parquet
    archbench export results/ -o all.jsonl          every run under results/
    """
    from archbench.export import ExportError, export
    from archbench.store import describe_skipped, skipped_lines

    try:
        path, n = export(runs, output, all_rows=all_rows)
    except ExportError as e:
        fail(str(e))
    click.echo(f"{n} rows -> {path}")
    note = describe_skipped(skipped_lines(*runs))
    if note:
        click.echo(f"warning: {note}", err=True)


@click.command(name="push")
@click.argument("run", metavar="RUN", type=click.Path())
@click.option("--repo-id", required=True, help="The Hugging Face dataset to upload to, ORG/NAME (created if missing).")
@click.option("--private", is_flag=True, help="Create the dataset private (when it does not exist yet).")
@click.option("--token", envvar="HF_TOKEN", default=None, help="A hub token (default: HF_TOKEN or `hf auth login`).")
def push_cmd(run, repo_id, private, token):
    """Upload a run to a Hugging Face dataset: data/<suite>/<run-id>.parquet (.jsonl without
    pyarrow) and its run.json, in one commit. Needs the hub extra (huggingface_hub).

    \b
    archbench push results/checkpoints/20260101-120000 --repo-id my-org/archbench-results
    """
    from archbench.export import ExportError, push

    try:
        url = push(run, repo_id, private=private, token=token)
    except ExportError as e:
        fail(str(e))
    click.echo(url)
