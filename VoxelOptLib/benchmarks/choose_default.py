#!/usr/bin/env python3
"""Fixed protocol for the default configuration: what each ingredient adds, and which candidate wins.

Every candidate (the ``paper`` preset with overrides: initial alignment, a shorter pyramid and
schedule -- 4 levels, theta 50, 5, 0.5, 5 scaling-and-squaring steps --, search radius,
refinement, network features) registers every development pair with labels; the table gives, per candidate, the
mean Dice after registration over all pairs, the gain over its own start on each pair, the worst
SDlogJ and folding, and the mean ``register()`` seconds on the 192x160x256 pseudo-CT pairs.

Pairs (``development_pairs.py``): the real CT B <- A (inter-patient, B scanned over 40 mm of a
96 mm grid) and Adef <- A (a known smooth warp), and label-derived pseudo-CT of BTCV subjects
(192x160x256 at 2 mm) 1 <- 2, 3 <- 4, 5 <- 6 (``--pseudo-pairs``).

The rule, fixed before the candidates were run: a candidate qualifies when it

* gains Dice over its start on every pair and >= :data:`MIN_THIN_GAIN` on B <- A,
* keeps SDlogJ <= :data:`MAX_SDLOGJ` and folding < :data:`MAX_FOLDING_PERCENT` on every pair,
* takes <= :data:`MAX_SECONDS` of ``register()`` on the pseudo-CT pairs on average (so the whole
  process, with reading, importing and writing, stays below deeds' 13-21 s on 2 CPU cores);

the qualifying candidate with the highest mean Dice over all pairs is the default. The
``accurate`` preset is the candidate with the highest mean Dice that meets every rule but the
time rule (printed as well).

``--neighbours`` runs the default's candidate and its :data:`NEIGHBOURS` (one setting changed
each: MIND radius and dilation, the refinement's grid and weight, the smoothing passes, alpha,
the features, the HU window) to check that the default sits at a local best of this protocol.

Usage::

    python VoxelOptLib/benchmarks/choose_default.py WORK_DIR [--shared ../shared] [--candidates NAME,... | --neighbours]

Network candidates read their weights from ``SHARED/models``. Prints Markdown tables; nothing is
written into the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from development_pairs import add_pair_arguments, chosen_names, development_pairs
from voxelopt import RegistrationConfig, register

REFINE = {"refine_iterations": 40, "refine_weight": 1.25, "refine_scale": 0.5}
SHORT_PYRAMID = {"levels": 4, "thetas": (50.0, 5.0, 0.5), "ss_steps": 5}
AFFINE_SHORT = {"init": "affine", **SHORT_PYRAMID}
#: Candidate name -> (preset, overrides), all on the ``paper`` preset (so they keep their meaning
#: when other presets change). ``weights`` of network candidates is filled in at run time.
CANDIDATES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "paper (no initial alignment)": ("paper", {}),
    "paper + com": ("paper", {"init": "com"}),
    "paper + affine": ("paper", {"init": "affine"}),
    "paper + affine + short pyramid": ("paper", AFFINE_SHORT),
    "paper + affine + k=2": ("paper", {"init": "affine", "k": 2}),
    "paper + affine + refinement": ("paper", {"init": "affine", **REFINE}),
    "paper + affine + short pyramid + refinement": ("paper", {**AFFINE_SHORT, **REFINE}),
    "paper + affine + short pyramid + 20 refinement steps": ("paper", {**AFFINE_SHORT, **REFINE, "refine_iterations": 20}),
    "paper + affine + short pyramid + refinement + k=2": ("paper", {**AFFINE_SHORT, **REFINE, "k": 2}),
    "paper + affine + short pyramid + refinement + k=2 (1 at the finest level)": (
        "paper", {**AFFINE_SHORT, **REFINE, "k": 2, "k_finest": 1}),
    "paper + affine + OBELISK": ("paper", {"init": "affine", "features": "mind+obelisk"}),
    "paper + affine + short pyramid + refinement + OBELISK": ("paper", {**AFFINE_SHORT, **REFINE, "features": "mind+obelisk"}),
    "paper + affine + short pyramid + refinement + OBELISK + k=2": ("paper", {**AFFINE_SHORT, **REFINE, "k": 2,
                                                                              "features": "mind+obelisk"}),
    "paper + affine + short pyramid + refinement + OBELISK + k=2 (1 at the finest level)": (
        "paper", {**AFFINE_SHORT, **REFINE, "k": 2, "k_finest": 1, "features": "mind+obelisk"}),
}
#: The neighbours of the default (``abdomen`` = :data:`ABDOMEN`, each with one setting changed):
#: ``--neighbours`` runs them to see whether the default sits at a local best on this protocol.
ABDOMEN = "paper + affine + short pyramid + refinement"
NEIGHBOURS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    f"{ABDOMEN} + {label}": ("paper", {**AFFINE_SHORT, **REFINE, **change}) for label, change in (
        ("MIND radius 1", {"mind_radius": 1}), ("MIND dilation 1", {"mind_dilation": 1}),
        ("refinement on the working grid", {"refine_scale": 1.0}),
        ("refinement on the working grid with 10 steps", {"refine_scale": 1.0, "refine_iterations": 10}),
        ("refinement at 0.75 of the working grid", {"refine_scale": 0.75}), ("refinement weight 0.75", {"refine_weight": 0.75}),
        ("2 smoothing passes", {"smoothing_passes": 2}), ("alpha 1.0", {"alpha": 1.0}), ("alpha 2.0", {"alpha": 2.0}),
        ("MIND and raw intensities", {"features": "mind+raw"}),
        ("soft-tissue window -200 to 300 HU", {"hu_window": (-200.0, 300.0)}))
}
MIN_THIN_GAIN = 0.02
MAX_SDLOGJ = 0.15
MAX_FOLDING_PERCENT = 0.1
MAX_SECONDS = 9.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pair_arguments(parser)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names of CANDIDATES")
    parser.add_argument("--neighbours", action="store_true",
                        help="run the default's candidate and its NEIGHBOURS (one setting changed each) instead")
    args = parser.parse_args()
    everything = {**CANDIDATES, **NEIGHBOURS}
    names = [ABDOMEN, *NEIGHBOURS] if args.neighbours else chosen_names(parser, args.candidates, everything, "candidates")
    pairs = development_pairs(args)
    weights = str(args.shared / "models")

    rows: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    print("| pair | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for pair_name, *paths in pairs:
        fixed, moving, fixed_labels, moving_labels = (sitk.ReadImage(str(p)) for p in paths)
        cells = []
        for name in names:
            preset, overrides = everything[name]
            if "obelisk" in overrides.get("features", ""):
                overrides = {**overrides, "weights": weights}
            start = time.perf_counter()
            result = register(fixed, moving, RegistrationConfig.preset(preset, **overrides), fixed_labels, moving_labels)
            m = result.metrics
            row = {"dice": m["dice_mean"], "gain": m["dice_mean"] - m["dice_initial_mean"], "sdlogj": m["sdlogj"],
                   "folding": m["folding_percent"], "seconds": time.perf_counter() - start,
                   "pseudo": not pair_name.startswith("real"), "thin": pair_name == "real B <- A"}
            rows[name].append(row)
            cells.append(f"{m['dice_initial_mean']:.3f} → {m['dice_mean']:.3f} ({row['seconds']:.1f} s)")
        print(f"| {pair_name} | " + " | ".join(cells) + " |", flush=True)

    print()
    print("| candidate | mean Dice | min gain (points) | B <- A gain | max SDlogJ | max folding % "
          "| pseudo-CT register() s | qualifies |")
    print("|---|---|---|---|---|---|---|---|")
    best, best_dice = None, -1.0
    accurate, accurate_dice = None, -1.0
    for name in names:
        r = rows[name]
        dice = float(np.mean([x["dice"] for x in r]))
        min_gain = min(x["gain"] for x in r)
        thin = [x["gain"] for x in r if x["thin"]]
        seconds = float(np.mean([x["seconds"] for x in r if x["pseudo"]] or [float("nan")]))
        sdlogj, folding = max(x["sdlogj"] for x in r), max(x["folding"] for x in r)
        robust = (min_gain > 0 and all(g >= MIN_THIN_GAIN for g in thin) and sdlogj <= MAX_SDLOGJ
                  and folding < MAX_FOLDING_PERCENT)
        ok = robust and seconds <= MAX_SECONDS
        if ok and dice > best_dice:
            best, best_dice = name, dice
        if robust and dice > accurate_dice:
            accurate, accurate_dice = name, dice
        print(f"| {name} | {dice:.3f} | {100 * min_gain:+.1f} | {', '.join(f'{100 * g:+.1f}' for g in thin)} "
              f"| {sdlogj:.3f} | {folding:.3f} | {seconds:.1f} | {'yes' if ok else 'no'} |")
    print()
    print(f"chosen: {best}" if best else "no candidate qualifies")
    print(f"accurate (every rule but the time rule): {accurate}" if accurate else "no candidate for accurate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
