#!/usr/bin/env python3
"""Quality and time of the initial alignments: none / centers / com / affine.

For each pair the moving labels are resampled onto the fixed grid through the initial alignment
alone (nearest neighbour) and scored with Dice against the fixed labels (labels present in both);
``s`` is the wall-clock seconds the alignment took and ``cpu s`` its process CPU seconds (all
threads; a fairer figure on a shared machine). Pairs:

* real CT ``../shared/data/totalseg_ct``: A (moving) -> B (fixed), an inter-patient pair whose
  fixed scan covers only 40 mm of its 96 mm grid; A -> Adef (a smooth deformation of A);
* label-derived pseudo-CT of BTCV subjects (made with ``../shared/tools/make_pseudoct.py`` into
  WORK_DIR, 192x160x256 at 2 mm), ordered pairs fixed <- moving.

Usage::

    python VoxelOptLib/benchmarks/affine_init.py WORK_DIR [--shared ../shared] [--subjects 1,2,3,4,5,6]

Prints a Markdown table. Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from development_pairs import DEFAULT_SHARED, pseudoct_pairs, real_ct_pairs
from voxelopt.affine import estimate_affine
from voxelopt.inputs import initial_translation

METHODS = ("none", "centers", "com", "affine")


def alignment(fixed: sitk.Image, moving: sitk.Image, method: str) -> sitk.Transform:
    """The fixed -> moving transform of one initial-alignment method."""
    if method == "affine":
        return estimate_affine(fixed, moving)
    return sitk.TranslationTransform(3, [float(v) for v in initial_translation(fixed, moving, method)])


def mean_dice(fixed_labels: sitk.Image, moving_labels: sitk.Image, transform: sitk.Transform) -> float:
    """Mean Dice over the labels present in both label maps (the rule of :mod:`voxelopt.metrics`)."""
    moved = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0)
    a, b = (sitk.GetArrayViewFromImage(x).astype(np.int64).ravel() for x in (fixed_labels, moved))
    m = sitk.GetArrayViewFromImage(moving_labels).astype(np.int64).ravel()
    n = int(max(a.max(), b.max(), m.max())) + 1
    in_a, in_b, in_m = (np.bincount(x[x >= 0], minlength=n) for x in (a, b, m))
    both = np.bincount(a[(a == b) & (a >= 0)], minlength=n)
    labels = [v for v in range(1, n) if in_a[v] and in_m[v]]
    return float(np.mean([2.0 * both[v] / (in_a[v] + in_b[v]) for v in labels]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--subjects", default="1,2,3,4,5,6", help="BTCV subjects 1-10 for the pseudo-CT pairs")
    args = parser.parse_args()
    subjects = [int(s) for s in args.subjects.split(",")]
    pairs = real_ct_pairs(args.shared) + pseudoct_pairs(args.shared, args.work_dir, list(zip(subjects, subjects[1:] + subjects[:1])))

    print("| pair (fixed <- moving) | " + " | ".join(f"{m} Dice" for m in METHODS) + " | affine s | affine cpu s |")
    print("|---|" + "---|" * (len(METHODS) + 2))
    totals = {m: [] for m in METHODS}
    for name, *paths in pairs:
        fixed, moving, fixed_labels, moving_labels = (sitk.ReadImage(str(p)) for p in paths)
        fixed, moving = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
        for method in METHODS:
            start, start_cpu = time.perf_counter(), time.process_time()
            transform = alignment(fixed, moving, method)
            seconds = (time.perf_counter() - start, time.process_time() - start_cpu)
            totals[method].append((mean_dice(fixed_labels, moving_labels, transform), *seconds))
        cells = [f"{totals[m][-1][0]:.3f}" for m in METHODS] + [f"{v:.2f}" for v in totals["affine"][-1][1:]]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    means = [f"{np.mean([row[0] for row in totals[m]]):.3f}" for m in METHODS]
    means += [f"{v:.2f}" for v in np.mean([row[1:] for row in totals["affine"]], axis=0)]
    print("| **mean** | " + " | ".join(means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
