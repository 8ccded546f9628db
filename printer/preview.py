"""Toolpath previews: one SVG per chosen layer of a G-code file, for a person to look at.

Reads the G-code back (so the picture is what will be printed, not what was planned) and
draws each layer's moves by `;TYPE:`: outer wall red, inner walls orange, skin blue, sparse
infill green, skirt purple, travels as thin grey dashes. The view is the model's bounding
box on the bed plus a margin, Y up as on the printer.
"""
from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

from gotapi3dp.config import ConfigError, SliceProfile

COLOURS = {"WALL-OUTER": "#d62728", "WALL-INNER": "#ff7f0e", "SKIN": "#1f77b4",
           "FILL": "#2ca02c", "SKIRT": "#9467bd"}
TRAVEL = "#999999"
MARGIN = 5.0                 # mm around the drawn moves
SCALE = 10.0                 # SVG px per mm


def parse_layers(text: str | None) -> list[int] | None:
    """`0,10,-1` -> [0, 10, -1]; None or empty means the default choice."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers {text}: expected layer numbers like 0,10,-1") from None


def write_previews(gcode: Path, directory: Path, layers: list[int] | None,
                   profile: SliceProfile) -> list[Path]:
    """Write `layer-NNNN.svg` for each chosen layer of `gcode`; return the files written."""
    moves = layer_moves(gcode.read_text(encoding="ascii", errors="replace").splitlines())
    count = len(moves)
    chosen = layers if layers is not None else sorted({0, count // 2, count - 1})
    wanted = []
    for index in chosen:
        real = index + count if index < 0 else index
        if not 0 <= real < count:
            raise ConfigError(f"--layers: layer {index} does not exist (0..{count - 1})")
        wanted.append(real)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for index in dict.fromkeys(wanted):
        path = directory / f"layer-{index:04d}.svg"
        path.write_text(svg(moves[index], f"layer {index} of {count}", profile.line_width),
                        encoding="utf-8")
        written.append(path)
    return written


Move = tuple[float, float, float, float, str]     # x0, y0, x1, y1, kind ("" = travel)


def layer_moves(lines: Iterable[str]) -> list[list[Move]]:
    """The XY moves of each `;LAYER:` of a G-code file, extruding ones with their kind."""
    layers: list[list[Move]] = []
    x = y = e = 0.0
    kind, relative = "", False
    for raw in lines:
        line = raw.strip()
        if line.startswith(";LAYER:"):
            layers.append([])
        elif line.startswith(";TYPE:"):
            kind = line[6:]
        elif line == ";END_GCODE":
            break
        words = line.split(";")[0].split()
        if not words:
            continue
        relative = {"M83": True, "M82": False}.get(words[0], relative)
        args = {w[0]: float(w[1:]) for w in words[1:] if w[0] in "XYE" and len(w) > 1}
        if words[0] == "G92":
            e = args.get("E", e)
        elif words[0] in ("G0", "G1"):
            nx, ny = args.get("X", x), args.get("Y", y)
            de = args.get("E", 0.0) if relative else args.get("E", e) - e
            if layers and (nx, ny) != (x, y):
                layers[-1].append((x, y, nx, ny, kind if de > 0 else ""))
            x, y = nx, ny
            e = e if relative else args.get("E", e)
    return layers


def svg(moves: list[Move], title: str, width: float) -> str:
    """An SVG picture of one layer's moves; extrusions drawn `width` mm wide."""
    if not moves:
        return _document(title, 0.0, 0.0, 10.0, 10.0, [])
    xs = [v for m in moves for v in (m[0], m[2])]
    ys = [v for m in moves for v in (m[1], m[3])]
    x0, y0 = min(xs) - MARGIN, min(ys) - MARGIN
    x1, y1 = max(xs) + MARGIN, max(ys) + MARGIN
    body = []
    for kind, colour in [("", TRAVEL), *COLOURS.items()]:
        segs = [m for m in moves if m[4] == kind]
        if not segs:
            continue
        d = " ".join(f"M{a:.3f} {-b:.3f}L{c:.3f} {-f:.3f}" for a, b, c, f, _ in segs)
        style = ('stroke-width="0.05" stroke-dasharray="0.4 0.3"' if not kind
                 else f'stroke-width="{width:.3f}" stroke-linecap="round" stroke-opacity="0.85"')
        body.append(f'<path d="{d}" fill="none" stroke="{colour}" {style}>'
                    f'<title>{html.escape(kind or "TRAVEL")}</title></path>')
    return _document(title, x0, y0, x1, y1, body)


def _document(title: str, x0: float, y0: float, x1: float, y1: float,
              body: list[str]) -> str:
    w, h = x1 - x0, y1 - y0
    legend = " ".join(f'<tspan fill="{c}">{k}</tspan>' for k, c in COLOURS.items())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * SCALE:.0f}" '
            f'height="{h * SCALE:.0f}" viewBox="{x0:.3f} {-y1:.3f} {w:.3f} {h:.3f}">'
            f'<title>{html.escape(title)}</title>'
            f'<rect x="{x0:.3f}" y="{-y1:.3f}" width="{w:.3f}" height="{h:.3f}" fill="white"/>'
            + "".join(body)
            + f'<text x="{x0 + 0.5:.3f}" y="{-y1 + 2:.3f}" font-size="1.6" '
            f'font-family="sans-serif">{html.escape(title)}: {legend} '
            f'<tspan fill="{TRAVEL}">TRAVEL</tspan></text></svg>\n')
