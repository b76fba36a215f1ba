"""Prefill and decode speed of a teacher and its student, with archbench's own timer.

A conversion is worth its cost only if the student is cheaper where it matters: prefilling a
prompt and decoding after it. ``lm_speed`` times both for any model exposing ``prefill(ids) ->
(logits, state)`` and ``step(ids_t, state) -> (logits, state)`` (the zoo's LMs, ``hf.HFCausalLM``
around a transformers teacher, the recipes' students) with ``archbench.measure.timing.time_fn``
(warm-up, repeats until the spread settles, median), and reports the peak memory of one extra
call with ``archbench.measure.memory.PeakMemory``. Decode is timed as ``decode_tokens`` steps
after a ``context``-token prompt whose state is rebuilt, untimed, before every timed call.
"""

from __future__ import annotations

import copy

import torch

from archbench.measure.memory import PeakMemory, current_memory
from archbench.measure.timing import time_fn


class CachedDecode:
    """``prefill`` and ``step``, the interface ``lm_speed`` times, for a model that implements
    ``_run(ids [B, T], state or None) -> (logits [B, T, V], state)``."""

    def prefill(self, ids: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Logits of ``ids`` [B, T] (continuing ``state`` if given) and the decode state after them."""
        return self._run(ids, state)

    def step(self, ids_t: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """One decode step: ids_t [B] -> (logits [B, V], state)."""
        logits, state = self._run(ids_t[:, None], state)
        return logits[:, -1], state


@torch.no_grad()
def lm_speed(model, context: int, decode_tokens: int = 16, vocab: int = 256, device: str = "cpu", seed: int = 0,
             budget_s: float = 0.5) -> dict:  # fmt: skip
    """``prefill_s`` (median, one ``context``-token prompt, batch 1), ``decode_s_per_token`` and
    the peak memory above the baseline of each, for ``model``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, context), generator=g).to(device)
    nxt = torch.randint(0, vocab, (1, decode_tokens), generator=g).to(device)
    kw = dict(device=device, warmup=2, min_repeats=5, max_repeats=50, budget_s=budget_s, flush_l2=False)
    base = current_memory(device)
    pre = time_fn(lambda: model.prefill(ids), **kw)
    with PeakMemory(device) as pm_pre:
        _, context_state = model.prefill(ids)
    live = {}

    def restore():
        live["state"] = copy.deepcopy(context_state)

    def decode():
        state = live["state"]
        for i in range(decode_tokens):
            _, state = model.step(nxt[:, i], state)

    dec = time_fn(decode, setup=restore, **kw)
    restore()
    with PeakMemory(device) as pm_dec:
        decode()
    return {
        f"prefill_s_{context}": pre.median_s,
        f"decode_s_per_token_{context}": dec.median_s / decode_tokens,
        f"prefill_peak_mem_bytes_{context}": max(0, pm_pre.peak_bytes - base),
        f"decode_peak_mem_bytes_{context}": max(0, pm_dec.peak_bytes - base),
        "speed_timer": pre.timer,
    }


@torch.no_grad()
def prefill_speed(logits_fn, context: int, vocab: int = 256, device: str = "cpu", seed: int = 0,
                  budget_s: float = 0.5) -> dict:  # fmt: skip
    """``prefill_s_{context}`` and ``prefill_peak_mem_bytes_{context}`` of ``logits_fn(ids [1, context])``,
    for models that have no cached decode (the bridge: its published form is not causal)."""
    ids = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed)).to(device)
    base = current_memory(device)
    pre = time_fn(lambda: logits_fn(ids), device=device, warmup=2, min_repeats=5, max_repeats=50, budget_s=budget_s,
                  flush_l2=False)  # fmt: skip
    with PeakMemory(device) as pm:
        logits_fn(ids)
    return {f"prefill_s_{context}": pre.median_s, f"prefill_peak_mem_bytes_{context}": max(0, pm.peak_bytes - base),
            "speed_timer": pre.timer}  # fmt: skip

