"""How large and how quick is the report of a big run?

Builds a synthetic run of 1,000 cells (10 archs x 4 backends x 5 lengths x 5 batches, prefill,
50 raw samples each, every tenth cell noisy), renders it, and reports:

* the page's size (the target is under 4 MB) and what takes the bytes (plotly.js, the figures,
  the tables);
* the render time in Python;
* in headless Chromium (Debian's ``chromium``), driven over the DevTools protocol on a pipe
  (``--remote-debugging-pipe``, no extra package), the wall-clock time from ``Page.navigate``
  until the first screen is ready: the page parsed (its tables are the first screen's answers),
  plotly.js unpacked and the figures in view drawn, as the page marks it; and until every figure
  has drawn. The page's own clock (``performance.now()``, real time from navigation start; no
  virtual time) gives the same marks and DOMContentLoaded. The script polls the page with
  ``Runtime.evaluate`` every 20 ms: an evaluation is answered only when the page's main thread
  is free, so the longest round trip after the first screen is the longest the page would keep
  a click waiting while the rest of the figures draw.

    python benchmarks/report_scale.py [--cells 1000] [--repeats 3] [--keep reports/scale.html]

The load average before and after is printed: on a shared machine the wall-clock numbers move
with it. Numbers for a machine go in docs/report.md with the machine, date and load.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from archbench.report import write_html

ARCHS = ("softmax_attention", "sliding_window_attention", "linear_attention", "gla", "retnet", "deltanet",
         "gated_deltanet", "rwkv7", "mamba", "mamba2")  # fmt: skip
FAMILIES = ("full/softmax", "sparse/static", "linear/linear-attention", "linear/gated", "linear/retention",
            "linear/delta-rule", "linear/delta-rule", "rnn/rwkv", "ssm/selective", "ssm/ssd")  # fmt: skip
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1300,900"]  # fmt: skip


def synthetic_rows(n_cells: int = 1000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    lens, batches = (1024, 2048, 4096, 8192, 16384), (1, 2, 4, 8, 16)
    for i, (arch, fam) in enumerate(zip(ARCHS, FAMILIES)):
        p = 2 if arch == "softmax_attention" else 1
        for backend in ("fused", "flex", "sdpa", "chunked"):
            for b in batches:
                for t in lens:
                    if len(rows) >= n_cells:
                        break
                    med = 1e-4 * b * (t / 1024) ** p * (1 + i / 10) * rng.uniform(0.9, 1.1)
                    rel = 0.3 if len(rows) % 10 == 0 else 0.02
                    rows.append(dict(key=f"{arch}-{backend}-{b}-{t}", run_id="scale", suite="scale", arch=arch,
                                     family=fam, backend=backend, mode="prefill", dtype="bfloat16", device="cuda",
                                     env_device_name="Synthetic GPU", batch=b, seq_len=t, d_model=1024, n_heads=16,
                                     status="ok", time_median_s=med, time_p10_s=med * 0.95, time_p90_s=med * 1.05,
                                     time_rel_iqr=rel, time_samples_s=list(rng.normal(med, 0.02 * med, 50)),
                                     repeats=50, tokens_per_s=b * t / med, peak_mem_bytes=b * t * 2e4 * (t / 1024) ** (p - 1),
                                     achieved_tflops=50 * rng.uniform(0.5, 1), expected_exponent=p,
                                     reference_backend=backend == "chunked"))  # fmt: skip
    return pd.DataFrame(rows)


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe``: JSON messages separated by
    NUL bytes, commands written to the browser's fd 3, answers and events read from its fd 4."""

    def __init__(self, binary: str, profile: Path):
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()

        def child_fds() -> None:  # the browser expects the pipe at fds 3 (commands) and 4 (answers)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_r, from_w)]  # either may already be 3 or 4
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target, inheritable=True)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                      "about:blank"], preexec_fn=child_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to)
        os.close(self._from)


def time_page(tools: DevTools, url: str, timeout_s: float = 180.0) -> dict:
    """Navigate to ``url`` and poll the page until its figures have drawn; wall-clock seconds to
    the first screen and to the last figure, the page's own marks, and the longest poll."""
    tools.call("Page.navigate", url="about:blank")
    probe = (f"location.href === {json.dumps(url)} && document.body ? [document.body.dataset.firstScreen || '', "
             "document.body.dataset.figuresDrawn || ''] : ['', '']")  # fmt: skip
    t0 = time.perf_counter()
    tools.call("Page.navigate", url=url)
    first_wall = drawn_wall = None
    worst_after_first = 0.0
    while time.perf_counter() - t0 < timeout_s:
        ask = time.perf_counter()
        first, drawn = tools.evaluate(probe)
        now = time.perf_counter()
        if first_wall is not None:
            worst_after_first = max(worst_after_first, now - ask)
        if first and first_wall is None:
            first_wall = now - t0
        if drawn:
            drawn_wall = now - t0
            break
        time.sleep(0.02)
    marks = tools.evaluate("JSON.stringify({dcl: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd, "
                           "first: +document.body.dataset.firstScreen, drawn: +document.body.dataset.figuresDrawn, "
                           "svg: document.querySelectorAll('.main-svg').length, "
                           "figures: document.querySelectorAll('.figure').length})")  # fmt: skip
    return {"first_wall_s": first_wall, "drawn_wall_s": drawn_wall, "longest_poll_s": worst_after_first,
            **json.loads(marks)}


def _sizes(page: str) -> dict[str, int]:
    """Bytes of the page's parts: plotly.js, the figures, the results table, the rest."""
    lib = re.search(r'<script id="plotly-js-gzip".*?</script>', page, re.S)
    figs = sum(len(m) for m in re.findall(r'<script type="application/x-archbench-plot".*?</script>', page, re.S))
    a = page.find('<section id="results">')
    table = page.find("</section>", a) - a if a >= 0 else 0
    lib_n = len(lib.group(0)) if lib else 0
    return {"plotly.js": lib_n, "figures": figs, "results table": table, "rest": len(page) - lib_n - figs - table}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="page loads to time in one browser")
    ap.add_argument("--keep", type=Path, help="also keep the page here")
    args = ap.parse_args()
    df = synthetic_rows(args.cells)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        t0 = time.perf_counter()
        write_html(df, [{"run_id": "scale", "suite": "scale", "n_cells": len(df), "status": "complete"}], page)
        render_s = time.perf_counter() - t0
        size = page.stat().st_size
        parts = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in _sizes(page.read_text(encoding="utf-8")).items())
        print(f"cells: {len(df)}  page: {size / 1e6:.2f} MB ({parts})  render: {render_s:.1f} s")
        if args.keep:
            args.keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(page, args.keep)
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            print("chromium not found: apt-get install -y chromium", file=sys.stderr)
            return 1
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
        tools = DevTools(binary, Path(tmp) / "profile")
        try:
            for i in range(args.repeats):
                r = time_page(tools, page.as_uri())
                print(f"load {i + 1}: first screen ready {r['first_wall_s']:.2f} s wall ({r['first'] / 1e3:.2f} s page "
                      f"clock; DOMContentLoaded {r['dcl'] / 1e3:.2f} s), all {r['figures']} figures drawn "
                      f"{r['drawn_wall_s'] or float('nan'):.2f} s wall, longest main-thread wait after the first "
                      f"screen {r['longest_poll_s'] * 1e3:.0f} ms; svg layers {r['svg']}")  # fmt: skip
        finally:
            tools.close()
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0 if size < 4e6 else 1


if __name__ == "__main__":
    sys.exit(main())
