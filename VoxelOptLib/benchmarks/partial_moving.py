#!/usr/bin/env python3
"""Fixed protocol for partial moving scans: each preset with the moving image cut in half.

A moving scan often covers less of the body than the fixed one (a liver-only follow-up against
a whole abdomen). This protocol cuts the moving image and its labels of every development pair
(real B <- A and Adef <- A, the BTCV pseudo-CT pairs 1 <- 2, 3 <- 4, 5 <- 6) to the lower and
the upper half of its grid along z (a valid image: the origin moves with the cut), and registers
it onto the whole fixed image with each preset from its own start, as well as the whole moving
image. Scores, at 2000 fixed organ points (seeded):

* Dice before -> after over the labels present in both (a cell is *lost* when after < before).
  With the moving image cut, Dice also rewards a field that stretches the remaining labels over
  the part of the fixed image the cut scan does not cover, so it is not the measure of accuracy
  here;
* *moved*: how far the cut moves the field, in mm, at the points whose partner under the whole
  image's registration lies in the cut scan: within :data:`EDGE_MM` of the cut and farther in.
  Where the cut scan has the anatomy, a registration should find what it found with the whole
  image; a field pulled into the scan near the cut moves there;
* on Adef <- A, where the true field is known (``Adef_gt_disp_mm``), the error of the field at
  the points whose true partner lies in the cut scan, near the cut (with the mean z error: its
  sign says whether the field pulls the anatomy into the scan, + into the upper half, - into
  the lower) and farther in; the whole moving image's row gives the reference.

Usage::

    python VoxelOptLib/benchmarks/partial_moving.py WORK_DIR [--shared ../shared] [--presets abdomen,fast,paper,accurate]

Written on 2026-12-07 after one exploratory run on Adef <- A (the one that found the field
pulling the anatomy into the scan near the cut), and extended with *moved* after the first run
of every pair, when Dice on the cut B <- A fell with the fix that the true field on Adef <- A
showed to be right; the README's *Accuracy* section has its last output, with the version before
the fix beside it.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from development_pairs import development_pairs, machine_line, preset_config, preset_protocol_arguments
from voxelopt import register

#: Distance (mm) from the cut within which a true partner counts as "at the edge".
EDGE_MM = 10.0
#: Fixed organ points scored (seeded).
POINTS = 2000


def cut(image: sitk.Image, labels: sitk.Image, part: str) -> Tuple[sitk.Image, sitk.Image]:
    """``image`` and ``labels`` (one grid) cut to the ``"lower"`` or ``"upper"`` half of their z
    slices, or whole (``"whole"``)."""
    n = image.GetSize()[2]
    first, last = {"whole": (0, n), "lower": (0, n // 2), "upper": (n // 2, n)}[part]
    return image[:, :, first:last], labels[:, :, first:last]


def organ_points(labels: sitk.Image) -> List[Tuple[float, float, float]]:
    """:data:`POINTS` seeded points (LPS mm) of the labelled voxels of ``labels``."""
    z, y, x = np.nonzero(sitk.GetArrayViewFromImage(labels))
    chosen = np.random.default_rng(0).choice(len(x), min(POINTS, len(x)), replace=False)
    return [labels.TransformContinuousIndexToPhysicalPoint((float(x[i]), float(y[i]), float(z[i]))) for i in chosen]


def mapped(transform: sitk.Transform, points) -> np.ndarray:
    return np.array([transform.TransformPoint(p) for p in points])


def distances(found: np.ndarray, reference: np.ndarray, moving: sitk.Image, part: str) -> Tuple[float, float, float]:
    """Mean |found - reference| (mm) at the points whose ``reference`` lies in the (cut) moving
    scan, as (near the cut, mean z difference near the cut, farther in); NaN where no point is.
    For the whole image every such point is "farther in"."""
    low = moving.TransformIndexToPhysicalPoint((0, 0, 0))[2]
    high = moving.TransformIndexToPhysicalPoint((0, 0, moving.GetSize()[2] - 1))[2]
    low, high = min(low, high), max(low, high)
    z = reference[:, 2]
    inside = (z >= low) & (z <= high)
    if part == "whole":
        depth = np.full(z.shape, np.inf)
    else:  # from the cut: the upper half's lower end, the lower half's upper end
        depth = z - low if part == "upper" else high - z
    near, inner = inside & (depth < EDGE_MM), inside & (depth >= EDGE_MM)
    error = np.linalg.norm(found - reference, axis=1)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return mean(error[near]), mean((found - reference)[near, 2]), mean(error[inner])


def distance_text(near: float, near_z: float, inner: float, part: str, signed: bool = False) -> str:
    """``near (z ...) / farther in`` for a cut (``-`` where no point is), the one mean for the whole image."""
    if part == "whole":
        return f"{inner:.2f}"
    text = "-" if math.isnan(near) else f"{near:.2f}"
    if signed and not math.isnan(near):
        text += f" (z {near_z:+.2f})"
    return text + (" / -" if math.isnan(inner) else f" / {inner:.2f}")


def main() -> int:
    args, presets = preset_protocol_arguments(__doc__.splitlines()[0])
    print(machine_line())
    print(f"Each cell: Dice before -> after; moved mm near the cut (< {EDGE_MM:g} mm) / farther in; on Adef <- A "
          "also the error against the true field, near the cut (mean z error) / farther in.")
    print("| pair | moving | " + " | ".join(presets) + " |")
    print("|---|---|" + "---|" * len(presets))
    summary: Dict[str, Dict[str, List]] = {p: {"failed": [], "lost": [], "gain": [], "moved": []} for p in presets}
    for name, fixed_path, moving_path, fixed_lab_path, moving_lab_path in development_pairs(args):
        fixed, fixed_lab = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(fixed_lab_path))
        moving, moving_lab = sitk.ReadImage(str(moving_path)), sitk.ReadImage(str(moving_lab_path))
        points = organ_points(fixed_lab)
        truth: Optional[np.ndarray] = None
        if name == "real Adef <- A":
            field = sitk.ReadImage(str(fixed_path.parent / "Adef_gt_disp_mm.nii.gz"), sitk.sitkVectorFloat64)
            truth = mapped(sitk.DisplacementFieldTransform(field), points)
        whole: Dict[str, np.ndarray] = {}
        for part in ("whole", "lower", "upper"):
            image, labels = cut(moving, moving_lab, part)
            cells = []
            for preset in presets:
                config = preset_config(preset, args.shared)
                if part != "whole" and preset not in whole:
                    cells.append("no whole result")
                    continue
                try:
                    result = register(fixed, image, config, fixed_lab, labels)
                except Exception as error:  # noqa: BLE001 - a protocol records every failure
                    summary[preset]["failed"].append(f"{name}, {part}: {error}")
                    cells.append(f"error: {type(error).__name__}")
                    continue
                m = result.metrics
                before, after = m["dice_initial_mean"], m["dice_mean"]
                found = mapped(result.transform(), points)
                cell = "no common label" if math.isnan(before) else f"{before:.3f} -> {after:.3f}"
                if part == "whole":
                    whole[preset] = found
                else:
                    moved = distances(found, whole[preset], image, part)
                    cell += f"; moved {distance_text(*moved, part)}"
                    summary[preset]["moved"].append(moved[0])
                    if not math.isnan(before):
                        summary[preset]["gain"].append(100 * (after - before))
                        if after < before:
                            summary[preset]["lost"].append(f"{name}, {part}: {before:.3f} -> {after:.3f}")
                if truth is not None:
                    cell += f"; error {distance_text(*distances(found, truth, image, part), part, signed=True)}"
                cells.append(cell)
            print(f"| {name} | {part} | " + " | ".join(cells) + " |", flush=True)
    print()
    for preset, s in summary.items():
        gains = s["gain"] or [float("nan")]
        print(f"{preset}: {len(s['gain'])} cut pairs scored, Dice gain mean {np.mean(gains):+.1f} / smallest "
              f"{min(gains):+.1f} points, {len(s['lost'])} lost, {len(s['failed'])} failed; moved near the cut: mean "
              f"{np.nanmean(s['moved'] or [float('nan')]):.2f} mm, largest {np.nanmax(s['moved'] or [float('nan')]):.2f} mm")
        for kind in ("failed", "lost"):
            for line in s[kind]:
                print(f"  {kind}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
