"""Run one cell in this process: build the mixer from the registry, make inputs, time the
mode, measure its memory, and return the measurement fields of a row.

Called inside a worker process (``archbench.worker``); raises on failure and lets the
worker classify the exception into a row status.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable

import torch

from archbench import registry
from archbench.measure.energy import EnergyResult, energy_source, measure_energy
from archbench.measure.memory import PeakMemory, current_memory, release_free_memory
from archbench.measure.timing import time_fn
from archbench.mixers.base import MixerConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Unsupported(Exception):
    """The cell cannot run here (backend unavailable, dtype unsupported, ...)."""


def _device_ready(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Unsupported("cell asks for a CUDA device and torch sees none (torch %s)" % torch.__version__)


def _make_call(mode: str, module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if mode == "fwd":
        module.eval()

        def fwd():
            with torch.no_grad():
                return module(x)

        return fwd
    if mode == "fwd_bwd":
        module.train()
        x.requires_grad_(True)
        grad_out = torch.randn_like(x)

        def fwd_bwd():
            for p in module.parameters():
                p.grad = None
            x.grad = None
            y = module(x)
            y.backward(grad_out)

        return fwd_bwd
    raise Unsupported(f"mode {mode!r} is not implemented by the bench")


def mixer_config(cell: dict) -> MixerConfig:
    """The MixerConfig of a cell: every cell field that MixerConfig knows."""
    fields = {f.name for f in dataclasses.fields(MixerConfig)}
    return MixerConfig(**{k: v for k, v in cell.items() if k in fields and v is not None})


def run_cell(cell: dict) -> dict:
    """Measure one cell (a dict of ``suite.Cell`` fields); returns the measurement fields."""
    device, dtype = cell["device"], cell["dtype"]
    spec = registry.get(cell["arch"])
    reason = spec.backend(cell["backend"]).unavailable_reason(device, dtype)
    if reason:
        raise Unsupported(f"backend {cell['backend']!r} of {cell['arch']!r} unavailable: {reason}")
    _device_ready(device)
    if cell.get("threads"):
        torch.set_num_threads(int(cell["threads"]))

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    else:
        release_free_memory()
    baseline = current_memory(device)

    torch.manual_seed(cell["seed"])
    config = mixer_config(cell)
    t_build = time.perf_counter()
    module = spec.build(config, cell["backend"]).to(device=device, dtype=DTYPES[dtype])
    x = torch.randn(cell["batch"], cell["seq_len"], config.d_model, device=device, dtype=DTYPES[dtype])
    call = _make_call(cell["mode"], module, x)
    build_s = time.perf_counter() - t_build

    m = cell["measure"]
    stats = time_fn(
        call,
        device=device,
        warmup=m["warmup"],
        min_repeats=m["min_repeats"],
        max_repeats=max(m["max_repeats"], m["min_repeats"]),
        budget_s=m["budget_s"],
        target_rel_iqr=m["target_rel_iqr"],
    )
    with PeakMemory(device) as pm:  # one extra, untimed call: the sampler never perturbs timing
        call()
    energy = _energy(call, device, m)

    tokens = cell["batch"] * cell["seq_len"]
    flops = None
    if spec.flops is not None:
        flops = spec.flops(config, cell["batch"], cell["seq_len"]) * (3.0 if cell["mode"] == "fwd_bwd" else 1.0)
    row = stats.as_row()
    row.update(energy.as_row(tokens_per_call=tokens))
    row.update(
        tokens_per_s=tokens / stats.median_s if stats.median_s > 0 else None,
        peak_mem_bytes=max(0, pm.peak_bytes - baseline),
        mem_method=pm.method + "_above_baseline",
        state_bytes=_state_bytes(module, cell),
        params=sum(p.numel() for p in module.parameters()),
        flops=flops,
        achieved_tflops=(flops / stats.median_s / 1e12) if flops and stats.median_s > 0 else None,
        build_s=build_s,
        threads=torch.get_num_threads(),
        family=spec.family,
    )
    return row


def _energy(call: Callable[[], object], device: str, m: dict) -> EnergyResult:
    if not m.get("energy", True):
        return EnergyResult("none", reason="disabled in the suite (measure.energy: false)")
    source, reason = energy_source(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else None
    return measure_energy(call, source, reason=reason, min_window_s=m.get("energy_window_s", 1.0), sync=sync)


def _state_bytes(module: torch.nn.Module, cell: dict) -> int | None:
    try:
        return int(module.state_bytes(cell["batch"], cell["seq_len"]))
    except (NotImplementedError, AttributeError):
        return None
