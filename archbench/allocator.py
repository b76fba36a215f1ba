"""The CPU memory setting archbench measures under: transparent huge pages for large tensors.

With ``THP_MEM_ALLOC_ENABLE=1`` in the environment when torch starts, PyTorch's CPU allocator
aligns its allocations to pages and asks the kernel for transparent huge pages (2 MiB) for
every tensor of 2 MiB or more (``madvise(MADV_HUGEPAGE)``). Where the kernel's THP mode is
``madvise`` (the common default) that is the only way a tensor gets
them; under ``always`` nothing changes, under ``never`` nothing can.

Why archbench turns it on: a training step allocates and frees many multi-megabyte
activations, and with 4 KiB pages each fresh one costs page faults and TLB misses; training
steps of small models get faster with it, while long single ops do not move.

``enable()`` sets the variable unless the user already did (``THP_MEM_ALLOC_ENABLE=0 archbench
...`` keeps PyTorch's default); torch reads it once, so the CLI calls it first thing and every
worker process before its imports. ``active()`` checks what the running process actually got, and ``facts()`` puts that and the kernel's mode in every run's env.
This module sits at the package's top level, importing nothing of archbench or torch at import
time, so that the CLI and the workers can call ``enable()`` before anything imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "THP_MEM_ALLOC_ENABLE"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def enable() -> None:
    """Ask for huge-page allocation unless the environment says otherwise. Call it before
    torch is imported: torch reads the variable once, and the first allocation may come early."""
    os.environ.setdefault(ENV, "1")


def active() -> bool:
    """Whether this process's torch allocates large tensors for huge pages. Checked, not
    assumed: with the setting on, every allocation of 2 MiB or more is page-aligned (4 KiB),
    while PyTorch's default alignment is 64 bytes (measured: mmap'd blocks then start 64 bytes
    past a page), so four such tensors all landing on page boundaries by chance is out of the
    question. Costs four short-lived 2 MiB allocations."""
    import torch

    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    held = [torch.empty((2 << 20) // 4 + 1024 * (i + 1), dtype=torch.float32) for i in range(4)]
    return all(t.data_ptr() % page == 0 for t in held)


def kernel_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``: the bracketed word), or None
    where the file is missing (not Linux, or no THP support)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def facts() -> dict:
    """What a run's env records: huge-page allocation in this process, and the kernel's mode."""
    return {"cpu_thp_alloc": active(), "thp_mode": kernel_mode()}
