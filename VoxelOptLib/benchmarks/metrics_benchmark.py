#!/usr/bin/env python3
"""Time ``voxelopt.metrics.label_metrics`` (Dice + HD95) on a full-size pair of label maps.

The label maps are synthetic: 512 x 512 x 300 voxels (x, y, z) at 0.8 x 0.8 x 1.5 mm with 8
ellipsoid "organs" of 3-15 cm; the warped map has every organ moved by a few voxels and resized
by a few percent. Prints the seconds of each run and the scores (so two versions can be checked
for agreement as well as speed).

    python VoxelOptLib/benchmarks/metrics_benchmark.py [--repeats 3] [--device cpu|cuda]
    python VoxelOptLib/benchmarks/metrics_benchmark.py --before-commit 473b393

``--before-commit C`` times the ``label_metrics`` of ``voxelopt/metrics.py`` as it was at git
commit C (its signature then was ``label_metrics(fixed, warped, spacing_zyx)``, full-grid-box
distance transforms on the CPU) instead of the current one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "VoxelOptLib" / "src"))

from voxelopt.metrics import label_metrics  # noqa: E402

SHAPE_ZYX = (300, 512, 512)
SPACING_ZYX = (1.5, 0.8, 0.8)


def organs(rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """A uint8 label map with ellipsoid ``k + 1`` at ``centres[k]`` with ``radii[k]`` (mm, z y x)."""
    out = np.zeros(SHAPE_ZYX, np.uint8)
    spacing = np.asarray(SPACING_ZYX)
    for label, (centre, radius) in enumerate(zip(centres, radii), start=1):
        low = np.maximum(((centre - radius) / spacing).astype(int), 0)
        high = np.minimum(((centre + radius) / spacing).astype(int) + 2, SHAPE_ZYX)
        axes = [(np.arange(lo, hi) * s - c) / r for lo, hi, s, c, r in zip(low, high, spacing, centre, radius)]
        inside = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2 <= 1.0
        box = out[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        box[inside] = label
    return out


def pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    extent = np.asarray(SHAPE_ZYX) * np.asarray(SPACING_ZYX)
    centres = rng.uniform(0.25, 0.75, (8, 3)) * extent
    radii = rng.uniform(15.0, 75.0, (8, 3))
    fixed = organs(rng, centres, radii)
    warped = organs(rng, centres + rng.uniform(-6.0, 6.0, (8, 3)), radii * rng.uniform(0.93, 1.07, (8, 3)))
    return fixed, warped.astype(np.int32)


def metrics_at(commit: str) -> types.ModuleType:
    """``voxelopt/metrics.py`` as it was at ``commit``, as a module."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:VoxelOptLib/src/voxelopt/metrics.py"],
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"metrics_{commit}")
    exec(compile(source, f"metrics.py@{commit}", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--before-commit", help="time label_metrics of this git commit instead")
    args = parser.parse_args()
    fixed, warped = pair()
    print(f"label maps {SHAPE_ZYX[::-1]} (x, y, z) at {SPACING_ZYX[::-1]} mm, labels {np.unique(fixed)[1:].tolist()}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    if args.before_commit:
        old = metrics_at(args.before_commit)
        run = lambda: old.label_metrics(fixed, warped, SPACING_ZYX)  # noqa: E731
        what = f"label_metrics at {args.before_commit}"
    else:
        device = torch.device(args.device)
        run = lambda: label_metrics(fixed, fixed, warped, SPACING_ZYX, device=device)  # noqa: E731
        what = f"label_metrics on {device}"
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run()
        print(f"{what}: {time.perf_counter() - start:.2f} s", flush=True)
    print(f"dice_mean {result['dice_mean']:.6f}, hd95_mm_mean {result['hd95_mm_mean']:.6f}")


if __name__ == "__main__":
    main()
