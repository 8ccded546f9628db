"""Slicer benchmark: ours beside PrusaSlicer and CuraEngine on ../shared/models, same settings.

Reports wall time, CPU time (user + sys of the process and its children), peak RSS, our time
to the first layer's G-code, and filament length. Each run is a fresh process (`/usr/bin/time`
style figures via os.wait4). References that are not installed are reported and skipped.

    python bench/slice.py [--models NAME ...] [--cura-defs DIR] [--out DIR]

Settings: 0.2 mm layers, 2 perimeters, 20 % grid infill, 4 top / 4 bottom, 0.4 mm nozzle and
line width, 1.75 mm filament, 1 skirt loop.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO.parent / "shared" / "models"
OURS = ["layer_height=0.2", "first_layer_height=0.2", "perimeters=2", "infill_density=0.2",
        "infill_pattern=grid", "top_layers=4", "bottom_layers=4", "nozzle_diameter=0.4",
        "line_width=0.4", "first_layer_line_width=0.4", "filament_diameter=1.75", "skirt_loops=1"]
PRUSA = ["--layer-height", "0.2", "--first-layer-height", "0.2", "--perimeters", "2",
         "--fill-density", "20%", "--fill-pattern", "grid", "--top-solid-layers", "4",
         "--bottom-solid-layers", "4", "--nozzle-diameter", "0.4", "--extrusion-width", "0.4",
         "--first-layer-extrusion-width", "0.4", "--filament-diameter", "1.75", "--skirts", "1",
         "--center", "110,110"]
CURA = {"layer_height": 0.2, "layer_height_0": 0.2, "wall_line_count": 2, "wall_thickness": 0.8,
        "infill_sparse_density": 20, "infill_pattern": "grid", "infill_line_distance": 4.0,
        "top_layers": 4, "bottom_layers": 4, "initial_bottom_layers": 4, "top_thickness": 0.8, "bottom_thickness": 0.8,
        "machine_nozzle_size": 0.4, "line_width": 0.4, "wall_line_width": 0.4,
        "wall_line_width_0": 0.4, "wall_line_width_x": 0.4, "skin_line_width": 0.4,
        "infill_line_width": 0.4, "skirt_brim_line_width": 0.4, "initial_layer_line_width_factor": 100,
        "material_diameter": 1.75, "adhesion_type": "skirt", "skirt_line_count": 1,
        "skirt_brim_minimal_length": 0, "skirt_gap": 3, "machine_width": 220, "machine_depth": 220, "machine_height": 250,
        "machine_center_is_zero": False, "mesh_position_x": 0, "mesh_position_y": 0,
        "machine_gcode_flavor": "RepRap (Marlin/Sprinter)", "roofing_layer_count": 0,
        "support_enable": False, "speed_print": 50, "speed_travel": 150, "speed_layer_0": 25,
        "retraction_amount": 0.8, "retraction_enable": True, "top_bottom_thickness": 0.8}


def measure(argv: list[str], first_marker: str | None = None) -> dict[str, float]:
    """Run argv; wall, cpu (user+sys incl. children), peak RSS (MB), optional first-layer time."""
    rss_file = tempfile.NamedTemporaryFile(suffix=".rss", delete=False).name
    timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    proc = subprocess.Popen([*timer, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    first = None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first_marker and first is None and line.startswith(first_marker):
            first = float(line.split()[-1])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{''.join(lines[-20:])}")
    text = Path(rss_file).read_text().strip().splitlines() if timer else []
    os.unlink(rss_file)
    rss = int(text[-1]) / 1024 if text and text[-1].isdigit() else float("nan")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": rss,
            "first": first if first is not None else float("nan")}


def filament_mm(gcode: Path) -> float:
    """Net filament pushed by a G-code file (E deltas summed; G92, M82/M83 honoured)."""
    total = e = 0.0
    relative = False
    for line in gcode.read_text(errors="replace").splitlines():
        words = line.split(";")[0].split()
        if not words:
            continue
        if words[0] in ("M82", "M83"):
            relative = words[0] == "M83"
        value = next((float(w[1:]) for w in words[1:] if w[:1] == "E" and len(w) > 1), None)
        if value is None:
            continue
        if words[0] == "G92":
            e = value
        elif words[0] in ("G0", "G1"):
            total += value if relative else value - e
            e = e if relative else value
    return total


OUR_RUNNER = """
import sys, time
from pathlib import Path
t_import = time.perf_counter()
from gotapi3dp.config import SliceProfile
from printer import profile, slicer
p = profile.load_profile(None, sys.argv[3:])
t0 = time.perf_counter()
with slicer.stream_gcode(Path(sys.argv[1]), p) as stream, open(sys.argv[2] + '.body', 'w') as out:
    for chunk in stream:
        if chunk.kind == 'layer' and chunk.index == 0:
            print('FIRST_LAYER', time.perf_counter() - t0, flush=True)
        out.write('\\n'.join(chunk.lines) + '\\n')
    Path(sys.argv[2]).write_text('\\n'.join(slicer.header_lines(stream)) + '\\n'
                                 + Path(sys.argv[2] + '.body').read_text())
"""


def run_ours(model: Path, out: Path) -> dict[str, float]:
    result = measure([sys.executable, "-c", OUR_RUNNER, str(model), str(out), *OURS],
                     first_marker="FIRST_LAYER")
    return {**result, "filament": filament_mm(out)}


def run_prusa(model: Path, out: Path) -> dict[str, float] | str:
    exe = shutil.which("prusa-slicer")
    if not exe:
        return "not installed (apt-get install prusa-slicer)"
    result = measure([exe, "--export-gcode", *PRUSA, "-o", str(out), str(model)])
    return {**result, "filament": filament_mm(out)}


def run_cura(model: Path, out: Path, defs: Path | None, tmp: Path) -> dict[str, float] | str:
    exe = shutil.which("CuraEngine")
    if not exe:
        return "not installed (apt-get install cura-engine)"
    if defs is None or not (defs / "fdmprinter.def.json").exists():
        return "fdmprinter.def.json not found (apt-get download cura; dpkg-deb -x; --cura-defs)"
    if model.suffix.lower() == ".3mf":                 # CuraEngine reads STL only; not timed
        import trimesh

        from gotapi3dp.threemf import read_3mf
        stl = tmp / (model.stem + ".stl")
        trimesh.Trimesh(*read_3mf(model), process=False).export(stl)
        model = stl
    settings = [a for k, v in CURA.items() for a in ("-s", f"{k}={str(v).lower() if isinstance(v, bool) else v}")]
    argv = [exe, "slice", "-v", "-j", str(defs / "fdmprinter.def.json"), *settings, "-e0",
            *settings, "-l", str(model), "-o", str(out)]
    result = measure(argv)
    return {**result, "filament": filament_mm(out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--cura-defs", type=Path,
                        default=Path("/tmp/cura/x/usr/share/cura/resources/definitions"))
    args = parser.parse_args()
    names = args.models or sorted(p.name for p in MODELS.iterdir() if p.suffix.lower() in (".stl", ".3mf"))
    print(f"{os.cpu_count()} CPUs; models from {MODELS}")
    print(f"{'model':32} {'slicer':12} {'wall s':>7} {'cpu s':>7} {'RSS MB':>7} {'1st layer s':>11} {'filament mm':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        for name in names:
            model = MODELS / name
            runs = {"gotapi-3dp": run_ours(model, tmpdir / "ours.gcode"),
                    "PrusaSlicer": run_prusa(model, tmpdir / "prusa.gcode"),
                    "CuraEngine": run_cura(model, tmpdir / "cura.gcode", args.cura_defs, tmpdir)}
            for who, r in runs.items():
                if isinstance(r, str):
                    print(f"{name:32} {who:12} {r}")
                    continue
                print(f"{name:32} {who:12} {r['wall']:7.2f} {r['cpu']:7.2f} {r['rss']:7.0f} "
                      f"{r['first']:11.2f} {r['filament']:11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
