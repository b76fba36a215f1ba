"""Figures embedded in the page: plotly.js once, inline, and each figure packed for its loader.

Each figure's JSON is gzip-compressed like plotly.js (a big run's figures repeat the same
keys and hover text thousands of times). Figures are drawn when they come into view (an
IntersectionObserver; those in the first screen before it is marked ready), and the rest one
per idle period, so a report of a thousand cells answers input at once
(``benchmarks/report_scale.py`` measures it).
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json

from plotly.offline import get_plotlyjs

PLOT_SCRIPT_TYPE = "application/x-archbench-plot"  # figure scripts wait for plotly.js under this type

_LOADER = """<script type="text/javascript">
(async () => {
  const inflate = (packed) => {
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    return new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  };
  (0, eval)(await inflate(document.getElementById("plotly-js-gzip").textContent));
  // Draw each figure when it comes into view (those in the first screen before it is marked
  // ready), the rest one by one in idle time, so the page answers input however many it holds.
  const pending = new Set(document.querySelectorAll('script[type="%s"]'));
  const drawing = [];
  const draw = (s) => {
    if (!pending.delete(s)) return null;
    const p = inflate(s.textContent).then((t) => {
      const f = JSON.parse(t);
      return Plotly.newPlot(document.getElementById(s.dataset.div), f.data, f.layout, f.config);
    });
    drawing.push(p);
    return p;
  };
  const box = (s) => s.closest(".figure") || s.parentElement;
  const near = (el) => { const r = el.getBoundingClientRect(); return r.top < innerHeight + 400 && r.bottom > -400; };
  await Promise.all([...pending].filter((s) => near(box(s))).map(draw));
  const seen = new IntersectionObserver((entries) => {
    for (const e of entries) if (e.isIntersecting) { seen.unobserve(e.target); draw(e.target._plot); }
  }, { rootMargin: "400px" });
  for (const s of pending) { const b = box(s); b._plot = s; seen.observe(b); }
  const idle = window.requestIdleCallback || ((f) => setTimeout(f, 30));
  const drain = async () => {  // one figure per idle period: input waits at most one figure's drawing
    while (pending.size) {
      await new Promise((resolve) => idle(resolve));
      const next = pending.values().next().value;
      if (next) await draw(next);
    }
    await Promise.all(drawing);
    document.body.dataset.figuresDrawn = String(performance.now());
  };
  requestAnimationFrame(() => { document.body.dataset.firstScreen = String(performance.now()); drain(); });
})().catch((e) => {
  document.body.insertAdjacentHTML("afterbegin",
    '<p class="warning">The figures need a browser with DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 or later).</p>');
  console.warn(e);
});
</script>""" % PLOT_SCRIPT_TYPE


@functools.lru_cache(maxsize=1)
def _plotly_gzip_b64() -> str:
    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)).decode("ascii")


def plotly_script() -> str:
    """plotly.js inline, gzip-compressed and base64-encoded (1.9 MB instead of 4.8 MB), unpacked
    by the browser's DecompressionStream, after which the figures' scripts run in order. Put
    at the end of the body, so every figure's div and script exist when it runs."""
    return f'<script id="plotly-js-gzip" type="application/octet-stream">{_plotly_gzip_b64()}</script>{_LOADER}'


_FIG_CONFIG = json.dumps({"displaylogo": False, "responsive": True})


def figure_div(fig, div_id: str, kind: str) -> str:
    """A figure's box: an empty plot div sized to the figure, and the figure's plotly JSON
    (``{"data", "layout", "config"}``), gzip-compressed and base64-encoded, in a script the
    loader unpacks and draws when the box comes into view. Figures of a big run repeat the same
    keys, template and hover text thousands of times: compressed they take a tenth of the bytes."""
    spec = fig.to_json()  # plotly's encoder: arrays as typed base64, < > / escaped
    payload = spec[: spec.rindex("}")] + f',"config":{_FIG_CONFIG}}}'
    packed = base64.b64encode(gzip.compress(payload.encode(), compresslevel=9, mtime=0)).decode("ascii")
    height = fig.layout.height or 450
    return (f'<div class="figure figure-{kind}" style="min-height:{int(height)}px">'
            f'<div id="{html.escape(div_id)}" class="plotly-graph-div" style="height:{int(height)}px; width:100%;"></div>'
            f'<script type="{PLOT_SCRIPT_TYPE}" data-div="{html.escape(div_id)}">{packed}</script></div>')  # fmt: skip

