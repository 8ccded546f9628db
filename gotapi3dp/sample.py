"""The bundled sample model: a small calibration piece made with trimesh.

A 20 x 20 x 8 mm block with a 6 mm through hole and a 10 x 10 x 4 mm step on top: it has
perimeters inside and out, infill, and a change of outline with height, and prints in a few
seconds on the virtual firmware. `python -m gotapi3dp.sample` rewrites the bundled STL.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trimesh

SAMPLE_NAME = "calibration-piece.stl"


def make_sample() -> "trimesh.Trimesh":
    import trimesh
    block = trimesh.creation.box(extents=(20.0, 20.0, 8.0))
    block.apply_translation((0.0, 0.0, 4.0))
    step = trimesh.creation.box(extents=(10.0, 10.0, 4.0))
    step.apply_translation((5.0, 5.0, 10.0))
    hole = trimesh.creation.cylinder(radius=3.0, height=30.0, sections=48)
    hole.apply_translation((-4.0, -4.0, 6.0))
    return trimesh.boolean.difference([trimesh.boolean.union([block, step]), hole])


def sample_path() -> Path:
    """Path of the bundled sample STL inside the installed package."""
    return Path(str(resources.files("gotapi3dp") / "data" / SAMPLE_NAME))


if __name__ == "__main__":
    out = Path(__file__).with_name("data") / SAMPLE_NAME
    make_sample().export(out)
    print(f"wrote {out}")
