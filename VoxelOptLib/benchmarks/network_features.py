#!/usr/bin/env python3
"""Seconds per image of each feature extractor on the real CT A_img (192x160x48, 2 mm) and on a
BTCV label-derived pseudo-CT (192x160x256, 2 mm, made with ../shared/tools/make_pseudoct.py).

    python VoxelOptLib/benchmarks/network_features.py [--threads 2] [--repeat 3] [--device cpu]
        [--extractors obelisk,pdd,mind] [--models DIR] [--keep-freed-memory]

``--keep-freed-memory`` measures the extractors as the ``voxelopt`` command runs them: with freed
memory kept in the process for reuse (:func:`voxelopt.allocator.keep_freed_memory`), which a
library caller (a script, Slicer) does not have unless it asks for it. Without it every large
array of a call page-faults its memory in again (on the 2-core VM, about 0.65 M faults and
1.6-1.9 s of system time per OBELISK call at 192x160x256).

The network is loaded (and run once on the image: oneDNN/cuDNN set-up) before timing; each
figure is the best and the median of ``--repeat`` extract() calls (features not cached). The
system load average is printed with the table: on a shared machine the figures are only as
good as it is idle. Needs ../shared (the CT, the BTCV labels and the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

from development_pairs import (DEFAULT_SHARED as SHARED, add_keep_freed_memory_option, apply_keep_freed_memory,
                               btcv_labels, machine_line, make_pseudoct, positive_int)
from voxelopt.config import RegistrationConfig
from voxelopt.features import make_extractor



def images(workdir: Path):
    """(name, image) of the two benchmark images."""
    yield "A_img 192x160x48", sitk.ReadImage(str(SHARED / "data" / "totalseg_ct" / "A_img.nii.gz"), sitk.sitkFloat32)
    [(image, _)] = make_pseudoct(SHARED, workdir, [btcv_labels(SHARED, 1)])
    yield "BTCV 1 pseudo-CT 192x160x256", sitk.ReadImage(str(image), sitk.sitkFloat32)


def seconds(extractor, image: sitk.Image, device: torch.device, repeat: int):
    """Best and median wall-clock seconds of ``repeat`` extract() calls, and the median CPU
    seconds of this process per call (all threads)."""
    times, cpu = [], []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        extractor.extract(image, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(times), statistics.median(times), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--extractors", default="obelisk,pdd,mind")
    parser.add_argument("--models", default=str(SHARED / "models"))
    add_keep_freed_memory_option(parser)
    args = parser.parse_args()
    apply_keep_freed_memory(parser, args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    extractors = {name: make_extractor(RegistrationConfig(features=name, weights=args.models))
                  for name in args.extractors.split(",")}
    memory = "freed memory kept (as the voxelopt command)" if args.keep_freed_memory else "default allocator (as a library caller)"
    print(f"torch {torch.__version__}, {args.threads} threads, device {device}, {memory}; {machine_line()}")
    print("| image | extractor | first call (s) | best (s) | median (s) | CPU s per call |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for image_name, image in images(Path(tmp)):
            for name, extractor in extractors.items():
                first, _, _ = seconds(extractor, image, device, 1)
                best, median, cpu = seconds(extractor, image, device, args.repeat)
                print(f"| {image_name} | {name} | {first:.2f} | {best:.2f} | {median:.2f} | {cpu:.2f} |", flush=True)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
