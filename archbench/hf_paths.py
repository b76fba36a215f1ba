"""Which implementation transformers took for each token mixer of a loaded model, and how many
bytes its cache holds: the facts that say why a checkpoint's or an ``hf_*`` row is slow.

transformers runs a linear-time mixer through kernel-backed functions (mamba-ssm, causal-conv1d,
fla, the ``kernels`` hub) when they are importable for the device and through a torch loop
otherwise; attention through the implementation the config names (``sdpa``, ``eager``, ...).
``implementations`` reads that off the live modules, ``cache_bytes`` sizes any cache layout.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from typing import Any

import torch


def _fallback_facts(fn: Any, depth: int = 0) -> dict | None:
    """The closure of transformers' ``use_kernel_func_from_hub_with_fallback`` wrapper reachable
    from ``fn`` (a function, or the ``kernels`` module that wraps it): package, implementation and
    the torch function it falls back to."""
    if depth > 5 or fn is None:
        return None
    if isinstance(fn, torch.nn.Module):
        fn = type(fn).forward
    if not isinstance(fn, types.FunctionType):
        return None
    if fn.__closure__:
        try:
            nonlocals = inspect.getclosurevars(fn).nonlocals
        except (TypeError, ValueError):
            nonlocals = {}
        if "implementation" in nonlocals and "torch_function" in nonlocals and "package" in nonlocals:
            return nonlocals
        for v in nonlocals.values():
            if isinstance(v, types.FunctionType):
                found = _fallback_facts(v, depth + 1)
                if found:
                    return found
    return _fallback_facts(getattr(fn, "__wrapped__", None), depth + 1)


def _kernel_functions(module: torch.nn.Module) -> dict[str, Any]:
    """The kernel-backed functions a mixer calls: the ones transformers registered on it
    (``_kernel_funcs``, with the ``kernels`` package) or else the fallback-wrapped functions of
    its model file (same set, found by their wrapper)."""
    funcs = getattr(module, "_kernel_funcs", None)
    if isinstance(funcs, dict) and funcs:
        return dict(funcs)
    mod = sys.modules.get(type(module).__module__)
    out = {}
    for name, value in vars(mod).items() if mod else ():
        facts = _fallback_facts(value)
        if facts is not None:
            out[str(facts.get("func_name", name))] = value
    return out


def _hub_replaced(fn: Any) -> bool:
    """Whether ``kernels.kernelize`` swapped this function's forward for a hub kernel on this model.
    transformers kernelizes every model it loads while ``kernels`` is installed, but only functions
    with a hub kernel for the device get a new forward; the rest keep the fallback wrapper."""
    if not isinstance(fn, torch.nn.Module):
        return False
    forward = getattr(fn, "forward", None)
    return _fallback_facts(getattr(forward, "__func__", forward)) is None


def _provider(facts: dict, device_type: str, hub_kernel: bool) -> str:
    """Where a kernel-backed function's code comes from on ``device_type``; a torch fallback says why."""
    if hub_kernel:
        return "hub kernels"
    package, supported = str(facts["package"]), facts.get("supported_devices")
    if facts["implementation"] is facts["torch_function"]:
        return f"torch ({package} not importable)"
    if supported is not None and device_type not in supported:
        return f"torch ({package} has no {device_type} kernels)"
    return package


_LAYER_CHILD = re.compile(r"\.\d+\.[^.]+$")  # a direct child of a numbered layer: model.layers.3.self_attn
_MIXER_NAME = re.compile(r"(Attention|Mixer|DeltaNet|ShortConv|Mamba\w*|SSM|Retention)$")


def _softmax_attention(cls: str) -> bool:
    """Softmax attention classes (MLA included); linear-time ones named ...Attention carry Delta or Rwkv."""
    return cls.endswith("Attention") and "Delta" not in cls and "Rwkv" not in cls


def implementations(lm: torch.nn.Module, device: str) -> list[dict]:
    """Per mixer class: how many layers use it and the path transformers takes on ``device``.

    A mixer is a direct child of a numbered layer whose class names a token mixer. Each entry has
    ``mixer`` (the class), ``layers``, ``path`` (where its kernels come from, ``+``-joined: e.g.
    ``sdpa``, ``torch``, ``mamba_ssm+causal_conv1d``, ``hub kernels``) and, for linear-time
    mixers, ``functions`` (each kernel-backed function and its provider).
    """
    device_type = torch.device(device).type
    attn = getattr(lm.config, "_attn_implementation", None) or "eager"
    found: dict[str, dict] = {}
    for name, module in lm.named_modules():
        cls = type(module).__name__
        if not _LAYER_CHILD.search(name) or not _MIXER_NAME.search(cls) or "Norm" in cls:
            continue
        if cls in found:
            found[cls]["layers"] += 1
            continue
        entry = found[cls] = {"mixer": cls, "layers": 1}
        if "rwkv" in type(module).__module__:
            entry["path"] = _rwkv_path(device_type)
            continue
        if _softmax_attention(cls):
            entry["path"] = attn
            continue
        funcs = {}
        for fname, fn in _kernel_functions(module).items():
            facts = _fallback_facts(fn)
            if facts is not None:
                funcs[fname] = _provider(facts, device_type, _hub_replaced(fn))
        providers = {p.split(" (")[0] for p in funcs.values()}
        entry["path"] = "+".join(sorted(providers, key=lambda p: (p == "torch", p))) or "torch"
        if funcs:
            entry["functions"] = funcs
    return list(found.values())


def _rwkv_path(device_type: str) -> str:
    """RWKV-4's WKV kernel: a hub kernel transformers loads on CUDA (with ninja), else its torch loop."""
    mod = sys.modules.get("transformers.models.rwkv.modeling_rwkv")
    kernel = getattr(mod, "rwkv_cuda_kernel", None) if mod else None
    return "hub kernels" if kernel is not None and device_type == "cuda" else "torch"


def summary(impls: list[dict]) -> str:
    """One line for tables: ``Mamba2Mixer x24: torch; LlamaAttention x4: sdpa``."""
    return "; ".join(f"{e['mixer']} x{e['layers']}: {e['path']}" for e in impls)


def cache_bytes(cache: Any) -> int:
    """Bytes of the tensors a transformers cache holds (its layout changes across versions and families)."""
    seen: set[int] = set()
    total = 0

    def walk(obj, depth):
        nonlocal total
        if id(obj) in seen or depth > 8 or obj is None:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for v in vars(obj).values():
                walk(v, depth + 1)

    walk(cache, 0)
    return total
