#!/usr/bin/env python3
"""Make the development data and run the dataset evaluation on it.

Three steps, each one ``voxelopt-eval`` command (``--skip`` leaves steps out):

* ``real``: ``voxelopt-eval dataset`` on the real-CT pairs of ``../shared/data/totalseg_ct``
  (pairs CSV ``WORK_DIR/real_ct_pairs.csv``), VoxelOpt and every peer, into
  ``WORK_DIR/results_real_ct``: B <- A (fixed B, moving A: a real inter-patient pair; B is
  scanned over 40 mm of its 96 mm grid; no ground-truth field) and Adef <- A (A under a known
  smooth warp, its displacement given as ``gt_field``), so results.md has both pairs' rows.
* ``pseudoct``: label-derived pseudo-CT of Learn2Reg subjects 17-23 (BTCV files ``label0027``
  ... ``label0033`` in ``../shared/data/btcv_labels``: files 0001-0010 and 0021-0033 are
  subjects 1-23), made with ``../shared/tools/make_pseudoct.py`` at 192x160x256, 2 mm, into
  ``WORK_DIR/pseudoct``, and a subject list CSV (all 42 ordered pairs, the paper's 7 x 6
  protocol); ``voxelopt-eval dataset`` on it, VoxelOpt on every pair and the peers on the first
  ``--peer-pairs`` (0: none), into ``WORK_DIR/results_pseudoct``.
* ``ablation``: ``voxelopt-eval ablation`` on the first ``--ablation-pairs`` pseudo-CT pairs,
  into ``WORK_DIR/ablation_pseudoct``.

The pseudo-CT volumes (about 25 s to make; reused when they exist) are made only when the
``pseudoct`` or ``ablation`` step runs. ``--init`` is the common initial alignment of every
method (applied to the moving image and labels before any method runs); by default the preset's
own (``abdomen``: affine, i.e. every method starts from the centres of mass and VoxelOpt adds
its affine stage, as elastix and ANTs add theirs).

The options are checked before anything is made: an invalid value (``--init``, ``--preset``,
``--peers``, ``--skip``, a count below its minimum), a missing file in ``--shared``, or a
``--skip`` that leaves no step stops the script at once with an error (exit status 2). Exit
status 1: some pair failed (listed in that step's results.md); the other steps still run.

Nothing is written into the repository: data and results go to WORK_DIR. Usage:

    python VoxelOptLib/benchmarks/evaluate_development_data.py WORK_DIR [--shared ../shared]
        [--peers convexadam,ants,elastix] [--peer-pairs 6] [--ablation-pairs 3] [--threads 2]
        [--preset abdomen] [--init none|centers|com|affine] [--skip real,pseudoct,ablation]

Re-running resumes: finished pairs are skipped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from development_pairs import DEFAULT_SHARED, chosen_names, make_pseudoct
from voxelopt.config import DEFAULT_PRESET, PRESETS, SCHEMA, RegistrationConfig
from voxelopt.errors import ConfigError
from voxelopt_eval.peers import get_peer, parse_peer_list

SUBJECTS = range(17, 24)
STEPS = ("real", "pseudoct", "ablation")
#: The real-CT pairs (fixed case, ground-truth field file or None); the moving case is always A.
REAL_CT_PAIRS = (("B", None), ("Adef", "Adef_gt_disp_mm.nii.gz"))


def btcv_file(subject: int) -> str:
    """Learn2Reg subject number (1-23) -> BTCV label file name in btcv_labels/."""
    if 1 <= subject <= 10:
        return f"label{subject:04d}.nii.gz"
    if 11 <= subject <= 23:
        return f"label{subject + 10:04d}.nii.gz"
    raise ValueError(f"subject {subject} is not in 1-23")


def real_ct_dir(shared: Path) -> Path:
    return shared / "data" / "totalseg_ct"


def subject_label_files(shared: Path) -> List[Path]:
    return [shared / "data" / "btcv_labels" / btcv_file(s) for s in SUBJECTS]


def required_files(shared: Path, steps: Sequence[str], config: RegistrationConfig) -> List[Path]:
    """The files and folders of ``shared`` that ``steps`` read."""
    files: List[Path] = []
    if "real" in steps:
        real = real_ct_dir(shared)
        for fixed, gt_field in REAL_CT_PAIRS:
            files += [real / f"{case}_{kind}.nii.gz" for case in (fixed, "A") for kind in ("img", "lab")]
            files += [real / gt_field] if gt_field else []
    if "pseudoct" in steps or "ablation" in steps:
        files += subject_label_files(shared) + [shared / "tools" / "make_pseudoct.py"]
    if config.applies("weights"):  # network features: ../shared's pretrained weights
        files.append(shared / "models")
    return list(dict.fromkeys(files))


def write_real_ct_pairs(shared: Path, work: Path) -> Path:
    """``WORK/real_ct_pairs.csv``: the pairs of :data:`REAL_CT_PAIRS` (B <- A, Adef <- A)."""
    real = real_ct_dir(shared)
    lines = ["id,fixed,moving,fixed_labels,moving_labels,gt_field"]
    for fixed, gt_field in REAL_CT_PAIRS:
        lines.append(f"{fixed}<-A,{real / f'{fixed}_img.nii.gz'},{real / 'A_img.nii.gz'},"
                     f"{real / f'{fixed}_lab.nii.gz'},{real / 'A_lab.nii.gz'},{real / gt_field if gt_field else ''}")
    path = work / "real_ct_pairs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_pseudoct_subjects(shared: Path, work: Path) -> Path:
    """The pseudo-CT of :data:`SUBJECTS` (made unless present) and their subject list CSV."""
    images = make_pseudoct(shared, work / "pseudoct", subject_label_files(shared), quiet=False)
    cases = [image.name.split("_")[0] for image, _ in images]
    subjects = work / "subjects_17_23.csv"
    lines = ["id,image,labels"] + [f"S{s},pseudoct/{c}_img.nii.gz,pseudoct/{c}_lab.nii.gz" for s, c in zip(SUBJECTS, cases)]
    subjects.write_text("\n".join(lines) + "\n")
    return subjects


def voxelopt_eval(*args: str) -> int:
    """Run ``voxelopt-eval ARGS``; returns its exit status when 0 or 1 (1: some pair failed, the
    run went on), exits with it otherwise."""
    command = [sys.executable, "-m", "voxelopt_eval.cli", *args]
    print("+ voxelopt-eval " + " ".join(args), flush=True)
    code = subprocess.run(command).returncode
    if code not in (0, 1):
        sys.exit(code)
    return code


def parse_options(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options, checked (``parser.error``, exit status 2, on the first invalid one); adds
    ``steps`` (the steps to run), ``config`` (VoxelOpt's configuration) and resolved paths."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir")
    parser.add_argument("--shared", default=str(DEFAULT_SHARED))
    parser.add_argument("--peers", default="convexadam,ants,elastix", help="comma-separated peers ('' for none)")
    parser.add_argument("--peer-pairs", type=int, default=6, help="pseudo-CT pairs the peers run on (0: none)")
    parser.add_argument("--ablation-pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help=f"VoxelOpt preset (default: {DEFAULT_PRESET})")
    parser.add_argument("--init", choices=SCHEMA["init"].choices, default=None,
                        help="common initial alignment (default: the preset's)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to skip: {', '.join(STEPS)}")
    args = parser.parse_args(argv)
    skip = chosen_names(parser, args.skip, STEPS, "step in --skip")
    args.steps = [step for step in STEPS if step not in skip]
    if not args.steps:
        parser.error(f"--skip {args.skip} skips every step ({', '.join(STEPS)}): nothing to do")
    for option, value, least in (("--threads", args.threads, 1), ("--peer-pairs", args.peer_pairs, 0),
                                 ("--ablation-pairs", args.ablation_pairs, 1)):
        if value < least:
            parser.error(f"{option} must be >= {least}, got {value}")
    try:
        for kind in parse_peer_list(args.peers):  # usable here? (the steps run the peers on this machine)
            usable, reason = get_peer(kind).available()
            if not usable:
                raise ConfigError(f"{reason} (give --peers '' to run without the peers)")
        args.config = RegistrationConfig.preset(args.preset or DEFAULT_PRESET,
                                                **({"init": args.init} if args.init else {}))
    except ConfigError as error:
        parser.error(str(error))
    args.shared = Path(args.shared).resolve()
    missing = [str(path) for path in required_files(args.shared, args.steps, args.config) if not path.exists()]
    if missing:
        parser.error(f"missing in --shared {args.shared}, needed by step(s) {', '.join(args.steps)}: {', '.join(missing)}")
    args.work_dir = Path(args.work_dir).resolve()
    if args.work_dir.exists() and not args.work_dir.is_dir():
        parser.error(f"WORK_DIR {args.work_dir} is a file; give a folder (made when missing)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the steps; returns 1 when some pair failed in any of them, else 0."""
    args = parse_options(argv)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(args.threads), "--device", "cpu"]
    common += ["--init", args.init] if args.init else []
    common += ["--preset", args.preset] if args.preset else []
    if args.config.applies("weights"):  # network features (accurate)
        common += ["--weights", str(args.shared / "models")]
    peers = ["--peers", args.peers] if args.peers else []
    codes = [0]
    if "real" in args.steps:
        real_csv = write_real_ct_pairs(args.shared, work)
        codes.append(voxelopt_eval("dataset", str(real_csv), "--out-dir", str(work / "results_real_ct"), *peers, *common))
    if "pseudoct" in args.steps or "ablation" in args.steps:
        subjects = make_pseudoct_subjects(args.shared, work)
        if "pseudoct" in args.steps:
            codes.append(voxelopt_eval("dataset", str(subjects), "--out-dir", str(work / "results_pseudoct"), *peers,
                                       "--peer-pairs", str(args.peer_pairs), *common))
        if "ablation" in args.steps:
            codes.append(voxelopt_eval("ablation", str(subjects), "--out-dir", str(work / "ablation_pseudoct"),
                                       "--max-pairs", str(args.ablation_pairs), *common))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
