#!/usr/bin/env python3
"""Time the whole ``voxelopt register`` process (start to exit, every file written) and its peak
memory, on the paper's grid and at native CT resolution.

Cases (``--cases``, default all):

* ``paper``: label-derived pseudo-CT of BTCV subjects 1 (moving) and 2 (fixed), 192x160x256 at
  2 mm (the paper's grid), float32 HU as ../shared/tools/make_pseudoct.py writes it;
* ``native300``: the same pair resampled to 512x512x300 at 0.8x0.8x1.0 mm, stored as int16 like
  scanner CT (labels uint8), centred on the pseudo-CT's box;
* ``native600``: the same at 512x512x600, 0.8x0.8x0.5 mm;
* ``native129``: the same at 512x512x129, 0.57x0.57x1.6 mm (the geometry issue 9 gives for a real
  CT pair; a smaller field of view than the others), not in the default cases.

Without ../shared a generated phantom pair of the paper's size is used instead of the pseudo-CT.
Each case runs ``python -m voxelopt.cli register FIXED MOVING --out-dir DIR --fixed-labels ...
--moving-labels ...`` (default parameters, or ``--preset``) ``--repeat`` times; the best run is
reported with the stage seconds from its metrics.json, the peak RSS of the process and, beside it,
the peak the registration estimates for its data before it starts (see estimated_peak_gb). Usage:

    python VoxelOptLib/benchmarks/benchmark.py [--cases paper,native300,native600,native129] [--repeat 2] [--preset paper]

Figures depend on the machine: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from development_pairs import DEFAULT_SHARED as SHARED, btcv_labels, machine_line, make_pseudoct, positive_int
from voxelopt.config import DEFAULT_PRESET, RegistrationConfig

NATIVE = {"native300": ((512, 512, 300), (0.8, 0.8, 1.0)), "native600": ((512, 512, 600), (0.8, 0.8, 0.5)),
          "native129": ((512, 512, 129), (0.57, 0.57, 1.6))}


def paper_pair(workdir: Path) -> Tuple[str, List[Path]]:
    """Write the paper-grid pair into ``workdir``; returns its description and its four paths."""
    labels = [btcv_labels(SHARED, i) for i in (1, 2)]
    if (SHARED / "tools" / "make_pseudoct.py").exists() and all(p.exists() for p in labels):
        (moving, moving_lab), (fixed, fixed_lab) = make_pseudoct(SHARED, workdir, labels)
        return "pseudo-CT case0002 (fixed) <- case0001 (moving)", [fixed, moving, fixed_lab, moving_lab]
    from voxelopt.phantom import phantom_pair

    pair = phantom_pair(size=(192, 160, 256), spacing=(2.0, 2.0, 2.0), max_displacement_mm=10.0)
    paths = [workdir / f"{n}.nii.gz" for n in ("fixed", "moving", "fixed_lab", "moving_lab")]
    for image, path in zip((pair.fixed, pair.moving, pair.fixed_labels, pair.moving_labels), paths):
        sitk.WriteImage(image, str(path))
    return "generated phantom pair", paths


def native_pair(paths: List[Path], size, spacing, workdir: Path) -> List[Path]:
    """The pair resampled to ``size`` voxels of ``spacing`` mm around the same centre (int16 / uint8)."""
    out = []
    for index, path in enumerate(paths):
        image = sitk.ReadImage(str(path))
        centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
        reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
        reference.SetSpacing(spacing)
        reference.SetDirection(image.GetDirection())
        corner = centre - np.asarray(image.GetDirection()).reshape(3, 3) @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
        reference.SetOrigin(tuple(corner))
        labels = index >= 2
        resampled = sitk.Resample(image, reference, sitk.Transform(),
                                  sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
                                  0 if labels else -1024.0, sitk.sitkUInt8 if labels else sitk.sitkInt16)
        target = workdir / f"{path.name.split('.')[0]}_{size[2]}.nii.gz"
        sitk.WriteImage(resampled, str(target), True, 1)
        out.append(target)
    return out


def run_register(paths: List[Path], out_dir: Path, extra: List[str]) -> Tuple[float, float, Dict]:
    """Wall seconds, peak RSS (GB) and metrics.json of one ``voxelopt register`` process."""
    fixed, moving, fixed_lab, moving_lab = (str(p) for p in paths)
    command = [sys.executable, "-m", "voxelopt.cli", "register", fixed, moving, "--out-dir", str(out_dir),
               "--fixed-labels", fixed_lab, "--moving-labels", moving_lab, "--quiet"] + extra
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"voxelopt register failed:\n{stderr}")
    peak = usage.ru_maxrss / 1024 ** 2
    return wall, peak, json.loads((out_dir / "metrics.json").read_text())


def estimated_peak_gb(paths: List[Path], extra: List[str]) -> float:
    """The peak memory (GB) the registration estimates for its data before it starts on the CPU
    (:mod:`voxelopt.peak_memory`), to set beside the measured peak: that one also holds the
    interpreter and the libraries (about 0.4 GB), which the estimate leaves out because the free
    memory it is compared with has them out already."""
    import torch

    from voxelopt.inputs import check_inputs
    from voxelopt.peak_memory import check_memory

    config = RegistrationConfig.preset(extra[1] if extra[:1] == ["--preset"] else DEFAULT_PRESET)
    fixed, moving = (sitk.ReadImage(str(p)) for p in paths[:2])
    return check_memory(check_inputs(fixed, moving, config, None, None), config, torch.device("cpu"), True) / 1024 ** 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="paper,native300,native600")
    parser.add_argument("--repeat", type=positive_int, default=2)
    parser.add_argument("--preset", default=None, help="a preset (default: the default parameters)")
    args = parser.parse_args()
    extra = ["--preset", args.preset] if args.preset else []
    if args.preset and RegistrationConfig.preset(args.preset).applies("weights") and (SHARED / "models").is_dir():
        extra += ["--weights", str(SHARED / "models")]  # network features (accurate): ../shared's weights
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c != "paper" and c not in NATIVE]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from paper, {', '.join(NATIVE)}")
    print(machine_line())
    print("| case | voxels (x, y, z) at mm | whole process s | solver s | outputs + writing s (share) | peak GB "
          "(the run's estimate of its data) | Dice before -> after |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        description, paper = paper_pair(workdir)
        for case in cases:
            paths = paper if case == "paper" else native_pair(paper, *NATIVE[case], workdir)
            best = None
            for repeat in range(args.repeat):
                result = run_register(paths, workdir / f"out_{case}_{repeat}", extra)
                best = result if best is None or result[0] < best[0] else best
            wall, peak, summary = best
            t, m = summary["timings_s"], summary["metrics"]
            tail = t.get("outputs", 0.0) + t.get("write", 0.0)  # the warp of the image: in "outputs" (or "write", on demand)
            image = sitk.ImageFileReader()
            image.SetFileName(str(paths[0]))
            image.ReadImageInformation()
            grid = f"{image.GetSize()} at {tuple(round(s, 2) for s in image.GetSpacing())}"
            print(f"| {case} | {grid} | {wall:.1f} | {t['solver']:.2f} | {tail:.1f} ({100 * tail / wall:.0f} %) | "
                  f"{peak:.2f} ({estimated_peak_gb(paths, extra):.2f}) | {m['dice_initial_mean']:.3f} -> "
                  f"{m['dice_mean']:.3f} |", flush=True)
    print(f"\npair: {description}; best of {args.repeat} runs per case; peak = max RSS of the register process")


if __name__ == "__main__":
    main()
