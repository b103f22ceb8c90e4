#!/usr/bin/env python3
"""Every preset on the real-CT development pairs of ../shared/data/totalseg_ct, with a fixed protocol.

* A (moving) -> B (fixed): a real inter-patient pair with a thin field of view (B is scanned over
  40 mm of a 96 mm grid; the rest is air);
* A (moving) -> Adef (fixed): the same patient under a known smooth warp (``Adef_gt_disp_mm``):
  the mean displacement error in the body (HU > -500 in Adef) is reported too.

Protocol: ``voxelopt.register`` with the preset (and ``--init``), labels given; Dice over the
labels present in both label maps (``voxelopt.metrics``), before -> after; SDlogJ, folding and the
whole register() time on this machine. Usage:

    python VoxelOptLib/benchmarks/real_ct_presets.py [--shared ../shared] [--presets abdomen,accurate,fast,paper]
        [--inits none,affine] [--threads 2] [--extra refine_iterations=5 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from development_pairs import DEFAULT_SHARED, chosen_names, positive_int, preset_config


def value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--presets", default="abdomen,accurate,fast,paper")
    parser.add_argument("--inits", default="none")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="further config fields, NAME=VALUE")
    args = parser.parse_args()
    from voxelopt.config import PRESETS, SCHEMA

    presets = chosen_names(parser, args.presets, PRESETS, "preset")
    inits = chosen_names(parser, args.inits, SCHEMA["init"].choices, "init")
    if any("=" not in item for item in args.extra):
        parser.error(f"--extra takes NAME=VALUE items, got {[item for item in args.extra if '=' not in item]}")

    import torch

    import voxelopt

    torch.set_num_threads(args.threads)
    data = args.shared / "data" / "totalseg_ct"
    read = lambda name: sitk.ReadImage(str(data / name))  # noqa: E731
    a, a_lab = read("A_img.nii.gz"), read("A_lab.nii.gz")
    pairs = {"A->B": (read("B_img.nii.gz"), read("B_lab.nii.gz"), None),
             "A->Adef": (read("Adef_img.nii.gz"), read("Adef_lab.nii.gz"), read("Adef_gt_disp_mm.nii.gz"))}
    extra = dict(item.split("=", 1) for item in args.extra)
    extra = {key: value(v) for key, v in extra.items()}
    print("| pair | preset | init | Dice before -> after | SDlogJ | folding % | error in body mm (before) | register() s |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, (fixed, fixed_lab, truth) in pairs.items():
        for preset in presets:
            for init in inits:
                config = preset_config(preset, args.shared, init=init, device="cpu", **extra)
                start = time.perf_counter()
                result = voxelopt.register(fixed, a, config, fixed_lab, a_lab)
                seconds = time.perf_counter() - start
                m = result.metrics
                error = ""
                if truth is not None:
                    body = sitk.GetArrayFromImage(fixed) > -500
                    d = sitk.GetArrayFromImage(result.field_image("fixed"))
                    g = sitk.GetArrayFromImage(truth)
                    error = (f"{np.linalg.norm(d - g, axis=-1)[body].mean():.2f} "
                             f"({np.linalg.norm(g, axis=-1)[body].mean():.2f})")
                print(f"| {pair} | {preset} | {init} | {m['dice_initial_mean']:.3f} -> {m['dice_mean']:.3f} | "
                      f"{m['sdlogj']:.3f} | {m['folding_percent']:.3f} | {error} | {seconds:.1f} |", flush=True)
    print(f"\nextra settings: {extra or 'none'}; torch {torch.__version__}, {args.threads} threads")


if __name__ == "__main__":
    main()
