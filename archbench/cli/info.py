"""``archbench list`` and ``archbench env``: the architecture catalogue and this machine."""

from __future__ import annotations

import json

import click


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
@click.option("--device", help="Check backend availability for this device (default: cuda if present, else cpu).")
@click.option("--dtype", default=None, help="Also check dtype support (e.g. bfloat16).")
@click.option("--family", default=None, help="Only architectures whose family starts with this (e.g. linear).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table", show_default=True,
              help="table: availability on this machine; json: the same for scripts (= --json); markdown: the "
                   "catalogue as a Markdown table, independent of this machine (the README's copy is this output).")
def list_(as_json, device, dtype, family, fmt):
    """The architecture catalogue, with each backend's availability on this machine (✓ trains and runs,
    ◐ forward only: fwd_bwd and task cells use the next backend, ◌ only under Triton's CPU interpreter
    (TRITON_INTERPRET=1: for tests, never timed), ✗ unavailable, with the reason).

    \b
    archbench list                          every architecture, availability here
    archbench list --family linear          linear/* only
    archbench list --device cuda --dtype bfloat16
    archbench list --format markdown        the catalogue table of the README
    """
    from archbench import registry

    if fmt == "markdown":
        from archbench.catalogue_table import markdown_table

        click.echo(markdown_table(registry.all_specs(), family=family), nl=False)
        return
    as_json = as_json or fmt == "json"

    device = device or _default_device()
    entries = []
    for spec in registry.all_specs():
        if family and not spec.family.startswith(family):
            continue
        backends = []
        for b in spec.backends:
            reason = b.unavailable_reason(device, dtype)
            backward = None if reason else b.unavailable_reason(device, dtype, backward=True)
            interpreted = reason is None and b.interpreted_only(device)
            backends.append({"name": b.name, "description": b.description, "available": reason is None, "reason": reason,
                             "trainable": reason is None and backward is None, "backward_reason": backward,
                             "interpreted": interpreted})  # fmt: skip
        entries.append(
            {
                "name": spec.name,
                "family": spec.family,
                "description": spec.description,
                "paper": spec.paper,
                "complexity": vars(spec.complexity),
                "has_decode": spec.has_decode,
                "backends": backends,
            }
        )
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"archbench architectures (availability on {device}{'/' + dtype if dtype else ''})")
    for col in ("name", "family", "description", "train / decode time", "backends"):
        table.add_column(col)
    for e in entries:
        bk = "\n".join(
            f"[cyan]◌[/] {b['name']}: Triton's interpreter only (for tests; auto and suites never use it here)"
            if b["interpreted"]
            else (f"[green]✓[/] {b['name']}" if b["trainable"] else f"[yellow]◐[/] {b['name']}: forward only ({escape(b['backward_reason'])})")
            if b["available"] else f"[red]✗[/] {b['name']}: {escape(b['reason'])}"
            for b in e["backends"]
        )  # fmt: skip
        cx = e["complexity"]
        table.add_row(escape(e["name"]), e["family"], escape(e["description"]), f"{cx['train_time']} / {cx['decode_time']}", bk)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


# ---- env --------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def env(as_json):
    """This machine: device, torch/CUDA, optional kernel packages, NVML."""
    import torch

    from archbench.measure.env import OPTIONAL_PACKAGES, collect_env, package_version

    device = _default_device()
    info = collect_env(device)
    info["device"] = device
    info["cuda_available"] = torch.cuda.is_available()
    info["torch_threads"] = torch.get_num_threads()
    info["optional_packages"] = {p: package_version(p) for p in OPTIONAL_PACKAGES}
    info["nvml"] = _nvml_status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b or 'not installed'}" for a, b in v.items())
        click.echo(f"{k:<{width}}  {v}")


def _nvml_status() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        return f"ok ({n} device(s))"
    except Exception as e:  # no driver on CPU machines
        return f"unavailable ({type(e).__name__})"
