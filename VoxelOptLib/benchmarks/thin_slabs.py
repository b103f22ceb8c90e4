#!/usr/bin/env python3
"""Fixed protocol for thin fixed images: each preset on fixed slabs of a few millimetres.

A short scan is often stored on a short grid (a few slices), not padded onto a taller one as
the real pair B <- A of ``../shared`` is. This protocol crops the fixed image and its labels of
every development pair (the real Adef <- A and the BTCV pseudo-CT pairs 1 <- 2, 3 <- 4, 5 <- 6;
B <- A is thin already) to slabs of :data:`THICKNESSES_MM` along z, centred at :data:`POSITIONS`
of the fixed labels' z extent, and registers the whole moving image onto each slab with each
preset from its own start. A cell counts as lost when the Dice after is below the Dice before;
the summary per preset gives the slabs that failed (an error), lost, or folded (folding ≥ 0.5 %
of the voxels), and the mean and smallest gain in points.

Usage::

    python VoxelOptLib/benchmarks/thin_slabs.py WORK_DIR [--shared ../shared] [--presets abdomen,fast,paper,accurate]

Written before it ran (2026-12-07); the README's *Accuracy* section has its last output.
"""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from development_pairs import development_pairs, preset_config, preset_protocol_arguments
from voxelopt import register
from voxelopt.extent import nonzero_extent

#: Slab thicknesses (mm along the fixed image's z axis).
THICKNESSES_MM = (6.0, 12.0, 24.0, 48.0)
#: Slab centres, as fractions of the fixed labels' z extent.
POSITIONS = (0.25, 0.5, 0.75)
#: Folding (% of the voxels) above which a result counts as folded.
MAX_FOLDING_PERCENT = 0.5


def slab(image: sitk.Image, labels: sitk.Image, centre: float, thickness_mm: float):
    """The slices of ``image`` and ``labels`` (one grid) within ``thickness_mm`` around the slice
    at fraction ``centre`` of the labels' z extent."""
    first_z, last_z = (int(e[0]) for e in nonzero_extent(sitk.GetArrayViewFromImage(labels)))  # array axis 0: z
    middle = int(round(first_z + centre * (last_z - first_z)))
    count = max(1, int(round(thickness_mm / image.GetSpacing()[2])))
    first = min(max(0, middle - count // 2), image.GetSize()[2] - count)
    return image[:, :, first:first + count], labels[:, :, first:first + count]


def main() -> int:
    args, presets = preset_protocol_arguments(__doc__.splitlines()[0])
    pairs = [p for p in development_pairs(args) if not p[0].startswith("real B")]  # B is thin already

    print("| pair | slab | " + " | ".join(presets) + " |")
    print("|---|---|" + "---|" * len(presets))
    summary: Dict[str, Dict[str, List]] = {p: {"failed": [], "lost": [], "folded": [], "gain": []} for p in presets}
    for name, fixed_path, moving_path, fixed_lab_path, moving_lab_path in pairs:
        fixed, fixed_lab = sitk.ReadImage(str(fixed_path)), sitk.ReadImage(str(fixed_lab_path))
        moving, moving_lab = sitk.ReadImage(str(moving_path)), sitk.ReadImage(str(moving_lab_path))
        for thickness in THICKNESSES_MM:
            for centre in POSITIONS:
                image, labels = slab(fixed, fixed_lab, centre, thickness)
                where = f"{thickness:g} mm at {centre:g}"
                cells = []
                for preset in presets:
                    config = preset_config(preset, args.shared)
                    try:
                        m = register(image, moving, config, labels, moving_lab).metrics
                    except Exception as error:  # noqa: BLE001 - a protocol records every failure
                        summary[preset]["failed"].append(f"{name}, {where}: {error}")
                        cells.append(f"error: {type(error).__name__}")
                        continue
                    before, after = m["dice_initial_mean"], m["dice_mean"]
                    if math.isnan(before):
                        cells.append("no common label")
                        continue
                    summary[preset]["gain"].append(100 * (after - before))
                    if after < before:
                        summary[preset]["lost"].append(f"{name}, {where}: {before:.3f} -> {after:.3f}")
                    if m["folding_percent"] >= MAX_FOLDING_PERCENT:
                        summary[preset]["folded"].append(f"{name}, {where}: {m['folding_percent']:.1f} %")
                    cells.append(f"{before:.3f} -> {after:.3f} (SDlogJ {m['sdlogj']:.2f})")
                print(f"| {name} | {where} | " + " | ".join(cells) + " |", flush=True)
    print()
    for preset, s in summary.items():
        gains = s["gain"] or [float("nan")]
        print(f"{preset}: {len(s['gain'])} slabs scored, gain mean {np.mean(gains):+.1f} / smallest {min(gains):+.1f} "
              f"points, {len(s['lost'])} lost, {len(s['folded'])} folded, {len(s['failed'])} failed")
        for kind in ("failed", "lost", "folded"):
            for line in s[kind]:
                print(f"  {kind}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
