"""The ``archbench`` command group: every command, each from its family's module."""

from __future__ import annotations

import click

from archbench.cli import compare, export, info, recipes, report, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="archbench")
def main() -> None:
    """archbench: measure efficient sequence-mixing architectures side by side.

    \b
    archbench run suites/smoke.yaml      run a suite, write rows and an HTML report
    archbench report RUN_DIR -o r.html   render a report from one or more runs
    archbench advise RUN --seq-len T --batch B   which architecture for this point, from measured rows
    archbench status RUN_DIR             per-shard progress and failures of a run
    archbench compare BASE HEAD          regression gate: exit 1 if a cell got slower
    archbench ab SUITE --base REV        the suite on two code versions, interleaved, compared
    archbench baseline save RUN_DIR F    keep a run as a baseline JSON for compare
    archbench convert radlads            convert a transformer into a linear-attention student
    archbench redundancy MODEL           rank redundant attention layers, distil a hybrid
    archbench list                       the architecture catalogue and its backends
    archbench env                        this machine: device, libraries, optional kernels
    archbench export RUN -o rows.parquet  rows as Parquet / CSV / JSON Lines
    archbench push RUN --repo-id ORG/NAME upload a run to a Hugging Face dataset
    """
    from archbench import allocator

    allocator.enable()  # before any command imports torch


for command in (run.run, run.status, report.report, report.advise, compare.compare_cmd, compare.baseline, compare.ab,
                recipes.convert, recipes.redundancy, info.list_, info.env, export.export_cmd, export.push_cmd):
    main.add_command(command)
