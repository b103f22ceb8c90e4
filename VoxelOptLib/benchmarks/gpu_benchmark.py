#!/usr/bin/env python3
"""``register()`` and the whole command on a CUDA GPU: the GPU targets of issues 9 and 10 in one run.

    python VoxelOptLib/benchmarks/gpu_benchmark.py [--shared DIR] [--cases paper,1mm]
        [--presets abdomen,accurate] [--repeat 5] [--device cuda] [--cpu] [--work DIR]

Cases: the pseudo-CT pair of ``benchmark.py`` (BTCV 2 <- 1 by ``tools/make_pseudoct.py``,
192x160x256 at 2 mm) and the same pair resampled to 1 mm (384x320x512, int16 CT). Per case and
preset: one warm-up ``register()`` with labels, then ``--repeat`` runs; printed are the median
seconds of ``register()`` and of its stages (the pipeline synchronises the device at every stage
boundary), the peak GPU memory (``torch.cuda.max_memory_allocated``), the mean Dice before ->
after, the seconds ``result.save`` takes to write every output (NIfTI), and one whole
``voxelopt register --device ...`` process (start to exit, every file written). ``--cpu`` adds the
same rows on the CPU for comparison (on the GPU machine: its own cores).

The lent GPU machines have no ``../shared`` and no SimpleITK (``../shared/docs/gpu_notes.md``).
``--prepare DIR`` (here, with ``../shared`` and PyPI) copies what the run reads
(``tools/make_pseudoct.py``, ``data/btcv_labels/label0001.nii.gz`` and ``label0002.nii.gz``,
``models/obelisk`` for ``accurate``: 2.1 MB) into ``DIR/shared``, downloads the SimpleITK wheel
into ``DIR/whl`` (53 MB) and prints the command to run there (``DIR`` inside the checkout and
git-ignored, e.g. ``.gpu``, so that it travels with it). Test that command on the CPU first
(``--device cpu --repeat 1``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import SimpleITK as sitk
import torch

from benchmark import run_register
from development_pairs import DEFAULT_SHARED, btcv_labels, chosen_names, make_pseudoct, positive_int
from voxelopt import RegistrationConfig, register
from voxelopt.io import read_images

CASES = {"paper": None, "1mm": ((384, 320, 512), (1.0, 1.0, 1.0))}


def case_paths(shared: Path, work: Path, case: str) -> List[Path]:
    """(fixed, moving, fixed labels, moving labels) of ``case``, made into ``work`` once."""
    from benchmark import native_pair

    (moving, moving_lab), (fixed, fixed_lab) = make_pseudoct(shared, work, [btcv_labels(shared, s) for s in (1, 2)])
    paths = [fixed, moving, fixed_lab, moving_lab]
    if CASES[case] is None:
        return paths
    size, spacing = CASES[case]
    made = [work / f"{p.name.split('.')[0]}_{size[2]}.nii.gz" for p in paths]
    return made if all(p.exists() for p in made) else native_pair(paths, size, spacing, work)


def measure(paths: List[Path], config: RegistrationConfig, device: str, repeat: int) -> Dict[str, object]:
    """Median ``register()`` and stage seconds over ``repeat`` runs after a warm-up, peak GPU
    memory, Dice, the writing's seconds."""
    fixed, moving, fixed_labels, moving_labels = read_images([(str(p), p.name) for p in paths])
    config = config.replace(device=device)
    cuda = device.startswith("cuda")
    register(fixed, moving, config, fixed_labels, moving_labels)  # warm-up: kernels, cuDNN plans, caches
    runs, stages, peaks = [], [], []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = register(fixed, moving, config, fixed_labels, moving_labels)
        if cuda:
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
        stages.append(result.timings)
        peaks.append(torch.cuda.max_memory_allocated() / 1024 ** 3 if cuda else float("nan"))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result.save(out)
        write = time.perf_counter() - start
    keys = [k for k in stages[0] if k in ("features_fixed", "alignment", "features_moving", "solver", "outputs")]
    return {"register": statistics.median(runs), "runs": runs, "write": write, "peak_gb": max(peaks),
            "stages": {k: statistics.median(s[k] for s in stages) for k in keys},
            "dice": (result.metrics["dice_initial_mean"], result.metrics["dice_mean"])}


def prepare(folder: Path, shared: Path) -> None:
    """Copy the run's inputs from ``shared`` into ``folder/shared``, download the SimpleITK wheel
    into ``folder/whl``, print the command for the GPU machine."""
    needed = [Path("tools/make_pseudoct.py"), *(btcv_labels(Path(), s) for s in (1, 2))]  # paths inside shared
    for relative in needed:
        (folder / "shared" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / relative, folder / "shared" / relative)
    shutil.copytree(shared / "models" / "obelisk", folder / "shared" / "models" / "obelisk", dirs_exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64", "-d", str(folder / "whl"),
                    "SimpleITK"], check=True)
    print("On the GPU machine, from the checkout's root (the folder carried with it):\n"
          f"python3 -m pip install -q --no-index --no-deps --target /tmp/site {folder}/whl/*.whl && "
          "PYTHONPATH=/tmp/site:$PWD/VoxelOptLib/src:$PWD/VoxelOptLib/benchmarks "
          f"python3 VoxelOptLib/benchmarks/gpu_benchmark.py --shared {folder}/shared --repeat 3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED,
                        help="folder with tools/make_pseudoct.py, data/btcv_labels/ and (for accurate) models/")
    parser.add_argument("--cases", default="paper,1mm")
    parser.add_argument("--presets", default="abdomen,accurate")
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cpu", action="store_true", help="also the same rows on the CPU")
    parser.add_argument("--work", type=Path, default=None, help="folder for the pseudo-CT (default: a temporary one)")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="copy the inputs and SimpleITK's wheel into DIR "
                        "for a machine without ../shared, print the command to run there, and stop")
    args = parser.parse_args()
    if args.prepare:
        return prepare(args.prepare, args.shared)
    cases = chosen_names(parser, args.cases, CASES, "case")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --device cpu to test the script")
    devices = [args.device] + (["cpu"] if args.cpu and args.device != "cpu" else [])
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print(f"CPU threads: {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        print("| case | preset | device | register() s (median) | features / alignment / solver / outputs s "
              "| peak GPU GB | save s | whole command s | Dice before -> after |")
        print("|---|---|---|---|---|---|---|---|---|")
        for case in cases:
            paths = case_paths(args.shared, work, case)
            size = "x".join(str(n) for n in sitk.ReadImage(str(paths[0])).GetSize())
            for preset in presets:
                config = RegistrationConfig.preset(preset)
                extra = ["--preset", preset]
                if config.applies("weights"):
                    config = config.replace(weights=str(args.shared / "models"))
                    extra += ["--weights", str(args.shared / "models")]
                for device in devices:
                    row = measure(paths, config, device, args.repeat)
                    wall, _, _ = run_register(paths, work / "out", extra + ["--device", device])
                    s = row["stages"]
                    features = s.get("features_fixed", 0.0) + s.get("features_moving", 0.0)
                    print(f"| {case} ({size}) | {preset} | {device} | {row['register']:.3f} "
                          f"({min(row['runs']):.3f}-{max(row['runs']):.3f}) | {features:.3f} / {s.get('alignment', 0.0):.3f} / "
                          f"{s.get('solver', 0.0):.3f} / {s.get('outputs', 0.0):.3f} | {row['peak_gb']:.2f} | "
                          f"{row['write']:.2f} | {wall:.1f} | {row['dice'][0]:.3f} -> {row['dice'][1]:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
