#!/usr/bin/env python3
"""Measure parameter choices of the `paper` preset on development data (prints a markdown table).

Data (from ../shared, never committed):
* real CT A -> Adef (../shared/data/totalseg_ct) with its known displacement: mean error (mm)
  inside the body (HU > -500) and Dice over the 13 TotalSegmentator organs;
* label-derived pseudo-CT of BTCV training subjects 1-6 (made with ../shared/tools/make_pseudoct.py),
  pairs fixed <- moving: 2<-1, 4<-3, 6<-5, 3<-6: mean Dice over the 8 organs.
Subjects 17-23, used for the published evaluation, are not touched here.

    python VoxelOptLib/benchmarks/parameter_study.py '{}' '{"sigma_mode": "code"}' '{"k": 2}'

Each argument is a JSON object of overrides of the `paper` preset.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import voxelopt
from development_pairs import DEFAULT_SHARED as SHARED, btcv_labels, make_pseudoct

PAIRS = [("0002", "0001"), ("0004", "0003"), ("0006", "0005"), ("0003", "0006")]


def main() -> None:
    try:
        variants = [json.loads(a) for a in sys.argv[1:]] or [{}]
    except ValueError as error:
        sys.exit(f"parameter_study.py: each argument is a JSON object of config fields, e.g. '{{\"alpha\": 2}}': {error}")
    if not all(isinstance(v, dict) for v in variants):
        sys.exit("parameter_study.py: each argument is a JSON object of config fields, e.g. '{\"alpha\": 2}'")
    ct = SHARED / "data" / "totalseg_ct"
    read = lambda p: sitk.ReadImage(str(p))  # noqa: E731
    fixed, moving = read(ct / "Adef_img.nii.gz"), read(ct / "A_img.nii.gz")
    fixed_lab, moving_lab = read(ct / "Adef_lab.nii.gz"), read(ct / "A_lab.nii.gz")
    truth = sitk.GetArrayFromImage(read(ct / "Adef_gt_disp_mm.nii.gz"))
    body = sitk.GetArrayFromImage(fixed) > -500
    with tempfile.TemporaryDirectory() as tmp:
        make_pseudoct(SHARED, Path(tmp), [btcv_labels(SHARED, i) for i in range(1, 7)])
        pct = {(f, m): [read(Path(tmp) / f"case{c}_{k}.nii.gz") for c, k in ((f, "img"), (m, "img"), (f, "lab"), (m, "lab"))]
               for f, m in PAIRS}
    caches = {key: voxelopt.FeatureCache(8) for key in list(pct) + ["ct"]}
    print("| overrides of `paper` | A→Adef error in body (mm) | A→Adef Dice | pseudo-CT Dice (4 pairs) | pseudo-CT SDlogJ | solver s (pseudo-CT) |")
    print("|---|---|---|---|---|---|")
    for overrides in variants:
        config = voxelopt.RegistrationConfig.preset("paper", **overrides)
        result = voxelopt.register(fixed, moving, config, fixed_lab, moving_lab, cache=caches["ct"])
        error = np.linalg.norm(sitk.GetArrayFromImage(result.field_image("fixed")) - truth, axis=-1)[body].mean()
        dice, sdlogj, seconds = [], [], []
        for key, (f, m, fl, ml) in pct.items():
            r = voxelopt.register(f, m, config, fl, ml, cache=caches[key])
            dice.append(r.metrics["dice_mean"])
            sdlogj.append(r.metrics["sdlogj"])
            seconds.append(r.timings["solver"])
        print(f"| `{json.dumps(overrides)}` | {error:.2f} | {result.metrics['dice_mean']:.3f} | {np.mean(dice):.3f} "
              f"| {np.mean(sdlogj):.3f} | {np.median(seconds):.1f} |", flush=True)


if __name__ == "__main__":
    main()
