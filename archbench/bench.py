"""Run one cell in this process: build the mixer from the registry, make inputs, time the
mode, measure its memory and energy, and return the measurement fields of a row.

Modes:
  ``fwd``      the parallel form under ``torch.no_grad()``: one training/inference forward.
  ``fwd_bwd``  forward + backward against a fixed random output gradient (a training step
               without the optimiser), gradients reset before each call.
  ``prefill``  ``prefill(x)`` over a T-token prompt: the parallel form that also returns the
               decode state (KV cache or recurrent state).
  ``decode``   ``decode_tokens`` calls of ``step`` continuing from the state of a T-token
               context (built untimed by ``prefill``, and restored untimed before each timed
               call); reported per call and per token, with the state's bytes.
  ``task``     train a small LM of this arch on a task (``archbench.tasks``) and report
               its held-out accuracy (or bits per byte), best over the lr grid.
  ``bpb``, ``lm_eval``  (``level: checkpoint``) the quality of a pretrained checkpoint: bits per
               byte on a text, or one lm-evaluation-harness task (``archbench.quality``).

``level: checkpoint`` cells load the model their ``model`` field names (``archbench.checkpoint``)
and time it exactly as a ``level: model`` cell; their rows add the checkpoint's facts (config
architecture, parameters) and the implementation transformers took for each mixer.

Called inside a worker process (``archbench.run.worker``); raises on failure and lets the
worker classify the exception into a row status.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from archbench import registry, schema
from archbench import spec as spec_mod
from archbench.hybrids import building_for
from archbench.measure.cuda_graph import Graphed, capture
from archbench.measure.energy import EnergyResult, energy_source, measure_energy
from archbench.measure.memory import PeakMemory, SavedTensors, current_memory, nvml_process_bytes, release_free_memory
from archbench.measure.pinning import pinned_cpus
from archbench.measure.roofline import measure_peaks
from archbench.measure.timing import time_fn
from archbench.mixers.base import Mixer, MixerConfig
from archbench.models import LM, Stack, make_ffn
from archbench.ops.dispatch import recording
from archbench.schema import MODES, QUALITY_MODES

DTYPES = {name: getattr(torch, name) for name in schema.DTYPES}  # dtype name -> torch dtype


class Unsupported(spec_mod.Unsupported):
    """The cell cannot run here (backend unavailable, dtype unsupported, ...)."""


@dataclass
class Workload:
    """What the timer calls, what it resets untimed before each call, and what one call is worth."""

    call: Callable[[], object]
    tokens_per_call: int
    setup: Callable[[], None] | None = None
    flops_factor: float = 1.0  # x forward FLOPs
    extra: dict = field(default_factory=dict)
    kernels: frozenset[str] = frozenset()  # named while capturing a CUDA graph: a replay runs no Python


def graph_workload(work: Workload, device: str, warmup: int, capture_fn=capture) -> tuple[Workload, Graphed]:
    """The workload as CUDA-graph replays. A workload with a reset (decode) is reset before the
    warm-up calls and the capture only: replays need none (see ``measure.cuda_graph``). If the
    capture fails, the eager workload comes back unchanged, reset included, with the reason.
    The kernels the warm-up and the capture name are kept with the replay, which names none."""
    with recording() as kernels:
        graphed = capture_fn(work.call, device, warmup=warmup, setup=work.setup)
    if not graphed.used:
        return work, graphed
    return dataclasses.replace(work, call=graphed.call, setup=None, kernels=frozenset(kernels)), graphed


def graphs_wanted(setting: bool | str, mode: str, device: str) -> bool:
    """Whether a cell is timed as CUDA-graph replays: ``measure.cuda_graph`` is true (every
    mode) or ``"decode"`` (decode cells only, where launch overhead is most of B=1 latency on
    a GPU), and the cell runs on a CUDA device."""
    return device.startswith("cuda") and (setting is True or (setting == "decode" and mode == "decode"))


def _device_ready(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Unsupported("cell asks for a CUDA device and torch sees none (torch %s)" % torch.__version__)


def _workload(cell: dict, module: torch.nn.Module, x: torch.Tensor) -> Workload:
    mode, B, T = cell["mode"], cell["batch"], cell["seq_len"]
    if mode == "fwd":
        module.eval()

        def fwd():
            with torch.no_grad():
                return module(x)

        return Workload(fwd, B * T)
    if mode == "fwd_bwd":
        module.train()
        if x.is_floating_point():  # mixer level: a fixed random output gradient
            x.requires_grad_(True)
            grad_out = torch.randn_like(x)
            loss_of = lambda out: (out * grad_out).sum()  # noqa: E731 - d loss / d out = grad_out
        else:  # model level: next-token cross-entropy on the ids themselves
            targets = x.roll(-1, dims=1)
            loss_of = lambda logits: F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())  # noqa: E731

        def fwd_bwd():
            for p in module.parameters():
                p.grad = None
            x.grad = None
            loss_of(module(x)).backward()

        return Workload(fwd_bwd, B * T, flops_factor=3.0)
    if mode == "prefill":
        if getattr(type(module), "prefill", None) is Mixer.prefill:
            raise Unsupported(f"{type(module).__name__} has no parallel prefill (Mixer.prefill's token loop is not timed)")
        module.eval()

        def prefill():
            with torch.no_grad():
                return module.prefill(x)

        return Workload(prefill, B * T)
    if mode == "decode":
        module.eval()
        n = int(cell["measure"].get("decode_tokens", 16))
        with torch.no_grad():
            _, context_state = module.prefill(x)
        if x.is_floating_point():
            xs = torch.randn(B, n, x.shape[-1], device=x.device, dtype=x.dtype)
        else:
            xs = torch.randint(0, int(cell["vocab_size"]), (B, n), device=x.device)
        live = {}

        def restore():
            live["state"] = copy.deepcopy(context_state)

        def decode():
            with torch.no_grad():
                state = live["state"]
                for i in range(n):
                    _, state = module.step(xs[:, i], state)

        return Workload(decode, B * n, setup=restore, extra={"decode_tokens": n})
    raise Unsupported(f"mode {mode!r} is not implemented by the bench; modes: {', '.join(MODES)}")


def build_module(spec, config: MixerConfig, cell: dict) -> torch.nn.Module:
    """The mixer alone (level ``mixer``), or a small LM around it (level ``model``):
    embedding -> n_layers pre-norm blocks of this mixer + SwiGLU MLP -> tied head. A hybrid
    is already a stack of blocks, so at model level it only gains the embedding and head."""
    if cell.get("level") == "checkpoint" or spec.level == "checkpoint":  # a pretrained model from disk or the hub
        if cell.get("level") != "checkpoint" or spec.level != "checkpoint":
            raise Unsupported("a pretrained model needs arch: checkpoint with level: checkpoint and model: DIR")
        from archbench.checkpoint import build

        return build(cell)
    if spec.level == "model":  # a whole LM already (e.g. a transformers model family)
        if cell.get("level", "mixer") != "model":
            raise Unsupported(f"{spec.name!r} is a model-level architecture (ids -> logits); set level: model")
        return spec.factory(config, cell["backend"], n_layers=int(cell["n_layers"]), vocab_size=int(cell["vocab_size"]))
    built = spec.build(config, cell["backend"])
    if cell.get("level", "mixer") != "model":
        return built
    stack = built if isinstance(built, Stack) else Stack(
        config, [built] + [spec.build(config, cell["backend"]) for _ in range(int(cell["n_layers"]) - 1)]
    )
    return LM(stack, int(cell["vocab_size"]))


def _forward_flops(spec, config: MixerConfig, cell: dict, module: torch.nn.Module) -> float | None:
    """Analytic FLOPs of one call: the forward pass over B x T tokens, or for decode the
    ``decode_tokens`` steps after a T-token context (each priced at context T). Model level
    adds the SwiGLU MLPs and the tied output head for the same tokens."""
    B, T = cell["batch"], cell["seq_len"]
    if cell["mode"] == "decode":
        n = int(cell["measure"].get("decode_tokens", 16))
        per_token = spec.decode_cost(config, B, T)
        if per_token is None:
            return None
        mixer, tokens = n * per_token, B * n
    else:
        if spec.flops is None:
            return None
        mixer, tokens = spec.flops(config, B, T), B * T
    if cell.get("level", "mixer") != "model":
        return mixer
    d, V, L = config.d_model, int(cell["vocab_size"]), int(cell["n_layers"])
    hidden = make_ffn("swiglu", d).down.in_features  # the MLP width Stack uses
    mlp = 2 * tokens * 3 * d * hidden  # SwiGLU (gate, up, down) per block
    if isinstance(module, LM) and spec.family.startswith("hybrid/"):  # a hybrid counts its own mixers
        return mixer + len(module.stack.blocks) * mlp + 2 * tokens * d * V
    return L * (mixer + mlp) + 2 * tokens * d * V  # + tied output head


def mixer_config(cell: dict) -> MixerConfig:
    """The MixerConfig of a cell: every cell field that MixerConfig knows."""
    fields = {f.name for f in dataclasses.fields(MixerConfig)}
    return MixerConfig(**{k: v for k, v in cell.items() if k in fields and v is not None})


def run_cell(cell: dict, progress: Callable[[dict], None] | None = None) -> dict:
    """Measure one cell (a dict of ``suite.Cell`` fields); returns the measurement fields.
    ``progress`` receives task cells' training progress (step, score, ...)."""
    if cell["mode"] == "recipe":  # a recipe has no architecture: it builds its own teacher and students
        from archbench.recipes.cell import run_recipe_cell

        if cell.get("threads"):
            torch.set_num_threads(int(cell["threads"]))
        return run_recipe_cell(cell, progress)
    device, dtype = cell["device"], cell["dtype"]
    spec = registry.get(cell["arch"])
    reason = spec.backend(cell["backend"]).unavailable_reason(device, dtype, backward=cell["mode"] in ("fwd_bwd", "task"))
    if reason:
        raise Unsupported(f"backend {cell['backend']!r} of {cell['arch']!r} unavailable: {reason}")
    if spec.backend(cell["backend"]).interpreted_only(device):
        raise Unsupported(
            f"backend {cell['backend']!r} of {cell['arch']!r} runs on {device} only under Triton's interpreter "
            "(TRITON_INTERPRET=1), which checks kernels, not their speed: use a CUDA device or the reference"
        )
    if cell["mode"] in ("prefill", "decode") and not spec.has_decode:
        raise Unsupported(f"{cell['arch']!r} has no recurrent/decode form, so no {cell['mode']} mode")
    _device_ready(device)
    if cell.get("threads"):
        torch.set_num_threads(int(cell["threads"]))
    with pinned_cpus(cell["measure"].get("pin_cpus", False) and not device.startswith("cuda"), torch.get_num_threads()) as cpus:
        row = _run(cell, spec, device, dtype, progress)
    if cpus is not None:
        row["cpu_affinity"] = cpus
    return row


def _run(cell: dict, spec, device: str, dtype: str, progress) -> dict:
    if cell["mode"] == "task":
        return run_task(cell, spec, progress)
    if cell["mode"] in QUALITY_MODES:
        if cell.get("level") != "checkpoint":
            raise Unsupported(f"mode {cell['mode']} scores a pretrained model; set level: checkpoint and model: DIR")
        from archbench.quality import run_quality

        return run_quality(cell)

    torch._dynamo.reset()  # compiled backends (flex) compile afresh in this cell's warm-up, under no recompile limit
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    else:
        release_free_memory()
    baseline = current_memory(device)

    torch.manual_seed(cell["seed"])
    config = mixer_config(cell)
    t_build = time.perf_counter()
    with building_for(device, backward=cell["mode"] == "fwd_bwd"):  # a hybrid's fused components: for this device and mode
        module = build_module(spec, config, cell).to(device=device, dtype=DTYPES[dtype])
    if cell.get("level") == "checkpoint":  # ids drawn from the checkpoint's own vocabulary
        cell = {**cell, "vocab_size": module.vocab_size}
    if cell.get("level", "mixer") in ("model", "checkpoint"):
        x = torch.randint(0, int(cell["vocab_size"]), (cell["batch"], cell["seq_len"]), device=device)
    else:
        x = torch.randn(cell["batch"], cell["seq_len"], config.d_model, device=device, dtype=DTYPES[dtype])
    work = _workload(cell, module, x)
    build_s = time.perf_counter() - t_build

    m = cell["measure"]
    eager = work
    graphed = None
    if graphs_wanted(m.get("cuda_graph", False), cell["mode"], device):
        work, graphed = graph_workload(work, device, max(1, m["warmup"]))
    stats = time_fn(
        work.call,
        device=device,
        setup=work.setup,
        flush_l2=m.get("flush_l2", True),
        warmup=m["warmup"],
        warmup_s=_warmup_s(m, device),
        min_repeats=m["min_repeats"],
        max_repeats=max(m["max_repeats"], m["min_repeats"]),
        budget_s=m["budget_s"],
        target_rel_iqr=m["target_rel_iqr"],
    )
    if work.setup:
        work.setup()
    with PeakMemory(device) as pm, recording() as kernels:  # one extra, untimed call
        work.call()
    memory = _memory_facts(module, eager, cell["mode"], device)
    energy = _energy(work, device, m)

    flops = None
    if spec.level == "mixer" and work.flops_factor:
        base = _forward_flops(spec, config, cell, module)
        flops = base * work.flops_factor if base is not None else None
    row = stats.as_row()
    if graphed is not None:
        row.update(cuda_graph=graphed.used, cuda_graph_reason=graphed.reason)
    row.update(energy.as_row(tokens_per_call=work.tokens_per_call))
    row.update(work.extra)
    if "decode_tokens" in work.extra:
        row["latency_per_token_s"] = stats.median_s / work.extra["decode_tokens"]
    achieved = (flops / stats.median_s / 1e12) if flops and stats.median_s > 0 else None
    min_bytes = _min_bytes(module, x, cell, work)
    if m.get("roofline", True):
        row.update(_roofline(device, dtype, achieved, flops, min_bytes, stats.median_s))
    row.update(
        tokens_per_s=work.tokens_per_call / stats.median_s if stats.median_s > 0 else None,
        peak_mem_bytes=max(0, pm.peak_bytes - baseline),
        mem_method=pm.method + "_above_baseline",
        state_bytes=_state_bytes(module, cell),
        params=sum(p.numel() for p in module.parameters()),
        **memory,
        flops=flops,
        achieved_tflops=achieved,
        build_s=build_s,
        threads_used=torch.get_num_threads(),
        family=spec.family,
        expected_exponent=spec.time_exponent,
        paper=spec.paper,
        train_complexity=spec.complexity.train_time,
        decode_complexity=f"{spec.complexity.decode_time}, {spec.complexity.decode_memory}",
        kernels=sorted(set(kernels) | work.kernels),
    )
    row.update(_model_facts(module, device))
    return row


def _model_facts(module: torch.nn.Module, device: str) -> dict:
    """A transformers model's facts (a checkpoint's architecture and parameters) and the path
    transformers took for each of its mixers; nothing for archbench's own modules."""
    if not hasattr(module, "implementations"):
        return {}
    impls = module.implementations(device)
    from archbench.checkpoint import summary

    return {**getattr(module, "facts", {}), "implementations": impls, "implementation": summary(impls)}


GPU_WARMUP_S = 0.25  # default time-based warm-up on a GPU: clocks ramp up from idle


def _warmup_s(measure: dict, device: str) -> float:
    value = measure.get("warmup_s")
    if value is None:
        return GPU_WARMUP_S if device.startswith("cuda") else 0.0
    return float(value)


def _memory_facts(module: torch.nn.Module, eager: Workload, mode: str, device: str) -> dict:
    """Parameter bytes; for fwd_bwd the bytes autograd saves for the backward pass (one more
    eager call, outside any CUDA graph); on a GPU what NVML charges this process (allocator
    cache and CUDA context included, as nvidia-smi shows)."""
    facts: dict = {"param_bytes": sum(p.numel() * p.element_size() for p in module.parameters())}
    if mode == "fwd_bwd":
        try:  # an extra measurement: if a kernel refuses the hooks, the row keeps its timings
            with SavedTensors(exclude=list(module.parameters())) as saved:
                eager.call()
            facts.update(activation_bytes=saved.bytes, activation_method=saved.method)
        except Exception as e:  # noqa: BLE001
            if "out of memory" in str(e).lower():
                raise
            facts.update(activation_bytes=None, activation_method=f"failed: {type(e).__name__}: {str(e)[:200]}")
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        used, reason = nvml_process_bytes(index)
        facts.update(nvml_process_mem_bytes=used, nvml_process_mem_reason=reason)
    return facts


def run_task(cell: dict, spec, progress: Callable[[dict], None] | None = None) -> dict:
    """A task cell: train LMs of this arch (``archbench.tasks.cell``) and describe the model."""
    from archbench.tasks.cell import run_task_cell

    config = mixer_config(cell)
    dtype = DTYPES[cell["dtype"]]
    ffn_choice = cell["train"].get("ffn", "auto")
    shapes: dict = {}

    def build_model(task) -> torch.nn.Module:
        ffn = task.default_ffn if ffn_choice == "auto" else (None if ffn_choice == "none" else ffn_choice)
        if spec.level == "model":  # the library's own LM, MLPs included
            shapes.update(vocab=task.vocab_size, seq_len=task.seq_len, ffn="model")
            return spec.factory(config, cell["backend"], n_layers=int(cell["n_layers"]), vocab_size=task.vocab_size)
        with building_for(cell["device"], backward=True):
            built = spec.build(config, cell["backend"])
        if isinstance(built, Stack):  # a hybrid: its own blocks and FFNs
            stack = built
        else:
            more = [spec.build(config, cell["backend"]) for _ in range(int(cell["n_layers"]) - 1)]
            stack = Stack(config, [built] + more, ffn=ffn)
        model = LM(stack, task.vocab_size)
        shapes.update(vocab=task.vocab_size, seq_len=task.seq_len, ffn=ffn if not isinstance(built, Stack) else "hybrid")
        return model

    t0 = time.perf_counter()
    row = run_task_cell(cell, build_model, dtype=dtype, on_progress=progress)
    from archbench.tasks.cell import task_from_cell

    model = build_model(task_from_cell(cell))  # fresh weights: the analytic sizes do not depend on them
    row.update(
        state_bytes=int(model.state_bytes(1, shapes["seq_len"])) if spec.has_decode else None,
        params=sum(p.numel() for p in model.parameters()),
        model_ffn=shapes["ffn"],
        wall_train_s=time.perf_counter() - t0,
        threads_used=torch.get_num_threads(),
        family=spec.family,
        paper=spec.paper,
        decode_complexity=f"{spec.complexity.decode_time}, {spec.complexity.decode_memory}",
    )
    return row


def _min_bytes(module: torch.nn.Module, x: torch.Tensor, cell: dict, work: Workload) -> int:
    """A lower bound on the bytes a call must move: the weights once, its inputs and outputs
    (x2 for fwd_bwd: gradients of the same size). Decode is sequential, so each of its steps
    reads every weight and the whole context state again; a fixed recurrent state is also
    written back each step, a KV cache gains one slot."""
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    width = x.shape[-1] * x.element_size() if x.is_floating_point() else 8 + 4 * int(cell["vocab_size"])
    io = work.tokens_per_call * (2 * width if x.is_floating_point() else width)  # ids in, logits out
    if cell["mode"] == "decode":
        n, T, B = int(work.extra.get("decode_tokens", 1)), cell["seq_len"], cell["batch"]
        state = _state_bytes(module, cell) or 0
        grows = state > 0 and (module.state_bytes(B, T + 1) > state if hasattr(module, "state_bytes") else False)
        per_step = weights + state + (state // max(T, 1) if grows else state)  # read; write one slot / all of it
        return int(n * per_step + io)
    total = weights + io
    return int(total * (2 if cell["mode"] == "fwd_bwd" else 1))


def _roofline(device: str, dtype: str, achieved_tflops, flops, min_bytes: int, median_s: float) -> dict:
    """Where the cell sits under the measured roofs: arithmetic intensity (FLOPs per byte of
    the lower-bound traffic), the roof at that intensity, and the percentage of it achieved."""
    peaks = measure_peaks(device, dtype)
    out = {**peaks, "min_bytes": min_bytes, "achieved_gbps": min_bytes / median_s / 1e9 if median_s > 0 else None}
    out["pct_peak_flops"] = 100.0 * achieved_tflops / peaks["peak_tflops"] if achieved_tflops else None
    if flops and min_bytes:
        intensity = flops / min_bytes
        roof_tflops = min(peaks["peak_tflops"], intensity * peaks["peak_gbps"] / 1e3)
        out.update(
            arithmetic_intensity=intensity,
            bound="compute" if roof_tflops >= peaks["peak_tflops"] else "memory",
            pct_of_roof=100.0 * achieved_tflops / roof_tflops if achieved_tflops and roof_tflops > 0 else None,
        )
    elif out["achieved_gbps"] is not None and peaks["peak_gbps"] > 0:  # decode: no FLOPs counted
        out.update(bound="memory", pct_of_roof=100.0 * out["achieved_gbps"] / peaks["peak_gbps"])
    return out


def _energy(work: Workload, device: str, m: dict) -> EnergyResult:
    if not m.get("energy", True):
        return EnergyResult("none", reason="disabled in the suite (measure.energy: false)")
    source, reason = energy_source(device)
    if source is None:
        return EnergyResult("none", reason=reason)
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else None

    def call():
        if work.setup:
            work.setup()
        work.call()

    return measure_energy(call, source, min_window_s=m.get("energy_window_s", 1.0), sync=sync)


def _state_bytes(module: torch.nn.Module, cell: dict) -> int | None:
    try:
        return int(module.state_bytes(cell["batch"], cell["seq_len"]))
    except (NotImplementedError, AttributeError):
        return None
