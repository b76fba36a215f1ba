"""Colours of the report: keyed by family, the same for an architecture in every report.

The hues are Okabe and Ito's eight colours (distinguishable with the common forms of colour
blindness), one per top-level family of the taxonomy (``full``, ``sparse``, ``linear``, ``rnn``,
``ssm``, ``hybrid``, ...). Architectures of one family share its hue at one of three
lightnesses, picked by a stable hash of the name (CRC-32, not Python's salted ``hash``), so
``mamba2`` is the same colour in every report; only when two architectures of one family in
the same report hash to one shade does the later name (alphabetically) take the next free one.
"""

from __future__ import annotations

import colorsys
import zlib

#: Okabe-Ito, https://jfly.uni-koeln.de/color/ (black left out: it is the roof line's colour).
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999")
FAMILY_COLORS = {
    "full": "#D55E00",  # softmax attention: vermilion, the baseline everything is read against
    "sparse": "#E69F00",
    "linear": "#0072B2",
    "rnn": "#009E73",
    "ssm": "#56B4E9",
    "hybrid": "#CC79A7",
    "model": "#999999",
}
_UNKNOWN = "#999999"
_SHADES = (0.0, -0.3, 0.3, -0.55, 0.55)  # lightness shifts within a family


def _stable(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def family_color(family: str | None) -> str:
    """The base colour of a family (taxonomy path such as ``ssm/selective``)."""
    top = (family or "").split("/")[0].strip().lower()
    if top in FAMILY_COLORS:
        return FAMILY_COLORS[top]
    return OKABE_ITO[_stable(top) % len(OKABE_ITO)] if top else _UNKNOWN


def _shade(hex_color: str, shift: float) -> str:
    r, g, b = (int(hex_color[i: i + 2], 16) / 255 for i in (1, 3, 5))
    h, l, s = colorsys.rgb_to_hls(r, g, b)
    l = min(0.85, max(0.18, l + shift * (l if shift < 0 else 1 - l)))
    r, g, b = colorsys.hls_to_rgb(h, l, s)
    return "#{:02X}{:02X}{:02X}".format(round(r * 255), round(g * 255), round(b * 255))


def _shade_index(arch: str) -> int:
    return 0 if arch == "softmax_attention" else _stable(arch) % len(_SHADES)  # the reference keeps the hue


def arch_color(arch: str, family: str | None) -> str:
    """The colour of ``arch``: its family's hue, at a lightness fixed by the name."""
    return _shade(family_color(family), _SHADES[_shade_index(arch)])


def arch_colors(families: dict[str, str | None]) -> dict[str, str]:
    """Colours for the archs of one report (arch -> family): ``arch_color``, except that two
    archs of one family never share a shade while another is free."""
    out, taken = {}, {}
    for arch in sorted(families, key=lambda a: (a != "softmax_attention", a)):
        fam = family_color(families[arch])
        used = taken.setdefault(fam, set())
        i = _shade_index(arch)
        for step in range(len(_SHADES)):
            if (i + step) % len(_SHADES) not in used:
                i = (i + step) % len(_SHADES)
                break
        used.add(i)
        out[arch] = _shade(fam, _SHADES[i])
    return out
