#!/usr/bin/env python3
"""Time the continuous refinement (``refine_iterations``) and measure what it changes.

1. Speed: the refinement alone on a 192x160x256 pair at 2 mm (the paper's grid; working grid
   96x80x128 at 4 mm) with 12-channel features (MIND-SSC's count), median of ``--repeat`` runs,
   wall-clock and CPU seconds (CPU seconds are the robust figure on a shared machine).
2. Accuracy, when ../shared is present: A (moving) -> Adef (fixed) of ../shared/data/totalseg_ct,
   mean displacement error inside the body against the known field, Dice, SDlogJ, folding,
   with and without the refinement (``--preset``, features computed once).

Usage:

    python VoxelOptLib/benchmarks/refinement.py [--iterations 40] [--weight 1.25] [--scale 0.5] [--repeat 3] [--device auto]

(defaults: the default preset's refinement)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import SimpleITK as sitk
import torch

import voxelopt
from development_pairs import DEFAULT_SHARED as SHARED, positive_int
from voxelopt.device import make_clock, resolve_device
from voxelopt.solver.refine import refine_field



def time_refinement(args: argparse.Namespace, device: torch.device) -> None:
    clock = make_clock(device)
    g = torch.Generator().manual_seed(0)
    shape = (1, 12, 128, 80, 96)
    fixed = torch.nn.functional.avg_pool3d(torch.rand(shape, generator=g), 5, 1, 2).to(device)
    moving = torch.roll(fixed, shifts=1, dims=2)
    field = torch.zeros((1, 3) + shape[2:], device=device)
    walls, cpus = [], []
    for _ in range(args.repeat):
        start, cpu = clock(), time.process_time()
        refine_field(moving, fixed, field, args.iterations, args.weight, grid_scale=args.scale)
        walls.append(clock() - start)
        cpus.append(time.process_time() - cpu)
    print(f"refinement of a 96x80x128 working grid, 12 channels, {args.iterations} iterations, grid scale "
          f"{args.scale} on {device} ({torch.get_num_threads()} threads): median {statistics.median(walls):.2f} s wall, "
          f"{statistics.median(cpus):.2f} s CPU (best {min(walls):.2f} s wall)")


def accuracy(args: argparse.Namespace) -> None:
    folder = SHARED / "data" / "totalseg_ct"
    if not folder.exists():
        print(f"accuracy: skipped ({folder} is absent)")
        return
    read = lambda name: sitk.ReadImage(str(folder / name))  # noqa: E731
    fixed, moving = read("Adef_img.nii.gz"), read("A_img.nii.gz")
    truth = sitk.GetArrayFromImage(read("Adef_gt_disp_mm.nii.gz"))
    body = sitk.GetArrayFromImage(fixed) > -500
    cache = voxelopt.FeatureCache()
    for iterations in (0, args.iterations):
        config = voxelopt.RegistrationConfig.preset(args.preset, device=args.device, refine_iterations=iterations,
                                                    refine_weight=args.weight, refine_scale=args.scale)
        result = voxelopt.register(fixed, moving, config, read("Adef_lab.nii.gz"), read("A_lab.nii.gz"), cache=cache)
        error = np.linalg.norm(sitk.GetArrayFromImage(result.field_image("fixed")) - truth, axis=-1)[body].mean()
        m = result.metrics
        print(f"A->Adef {args.preset} refine_iterations={iterations}: displacement error {error:.2f} mm (body), "
              f"Dice {m['dice_mean']:.3f} (before {m['dice_initial_mean']:.3f}), SDlogJ {m['sdlogj']:.3f}, "
              f"folding {m['folding_percent']:.3f} %, refinement {result.timings.get('refine', 0.0):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = voxelopt.RegistrationConfig()  # the default preset's refinement
    parser.add_argument("--iterations", type=int, default=defaults.refine_iterations)
    parser.add_argument("--weight", type=float, default=defaults.refine_weight)
    parser.add_argument("--scale", type=float, default=defaults.refine_scale)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    time_refinement(args, device)
    accuracy(args)


if __name__ == "__main__":
    main()
