#!/usr/bin/env python3
"""Make the development data and run the dataset evaluation on it.

1. Label-derived pseudo-CT of Learn2Reg subjects 17-23 (BTCV files ``label0027`` ...
   ``label0033`` in ``../shared/data/btcv_labels``: files 0001-0010 and 0021-0033 are subjects
   1-23) with ``../shared/tools/make_pseudoct.py``, at 192x160x256, 2 mm; a subject list CSV
   (all 42 ordered pairs, the paper's 7 x 6 protocol).
2. A pairs CSV of the real-CT pair A (moving) -> Adef (fixed) of ``../shared/data/totalseg_ct``
   with its known displacement (``gt_field``).
3. ``voxelopt-eval dataset`` on both (VoxelOpt on every pair; peers on the real-CT pair and
   on the first ``--peer-pairs`` pseudo-CT pairs), and ``voxelopt-eval ablation`` on the first
   ``--ablation-pairs`` pseudo-CT pairs. ``--init`` is the common initial alignment of every
   method (applied to the moving image and labels before any method runs); by default the
   preset's own (``abdomen``: affine, i.e. every method starts from the centres of mass and
   VoxelOpt adds its affine stage, as the peers add theirs).

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

from development_pairs import make_pseudoct
from voxelopt.config import DEFAULT_PRESET, RegistrationConfig

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"
SUBJECTS = range(17, 24)


def btcv_file(subject: int) -> str:
    """Learn2Reg subject number (1-23) -> BTCV label file name in btcv_labels/."""
    if 1 <= subject <= 10:
        return f"label{subject:04d}.nii.gz"
    if 11 <= subject <= 23:
        return f"label{subject + 10:04d}.nii.gz"
    raise ValueError(f"subject {subject} is not in 1-23")


def make_data(shared: Path, work: Path) -> tuple:
    data = work / "pseudoct"
    files = [shared / "data" / "btcv_labels" / btcv_file(s) for s in SUBJECTS]
    missing = [f for f in files if not f.exists()]
    if missing:
        sys.exit(f"error: missing label files {missing}")
    cases = [image.name.split("_")[0] for image, _ in make_pseudoct(shared, data, files, quiet=False)]
    subjects = work / "subjects_17_23.csv"
    lines = ["id,image,labels"] + [f"S{s},pseudoct/{c}_img.nii.gz,pseudoct/{c}_lab.nii.gz" for s, c in zip(SUBJECTS, cases)]
    subjects.write_text("\n".join(lines) + "\n")
    real = shared / "data" / "totalseg_ct"
    real_csv = work / "real_ct_pair.csv"
    real_csv.write_text("id,fixed,moving,fixed_labels,moving_labels,gt_field\n"
                        f"Adef<-A,{real / 'Adef_img.nii.gz'},{real / 'A_img.nii.gz'},{real / 'Adef_lab.nii.gz'},"
                        f"{real / 'A_lab.nii.gz'},{real / 'Adef_gt_disp_mm.nii.gz'}\n")
    return subjects, real_csv


def voxelopt_eval(*args: str) -> None:
    command = [sys.executable, "-m", "voxelopt_eval.cli", *args]
    print("+ voxelopt-eval " + " ".join(args), flush=True)
    code = subprocess.run(command).returncode
    if code not in (0, 1):  # 1 = some pair failed (reported in results.md); go on
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir")
    parser.add_argument("--shared", default=str(DEFAULT_SHARED))
    parser.add_argument("--peers", default="convexadam,ants,elastix")
    parser.add_argument("--peer-pairs", type=int, default=6)
    parser.add_argument("--ablation-pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default=None, help="VoxelOpt preset (default: the default preset)")
    parser.add_argument("--init", default=None, help="common initial alignment: none, centers, com or affine "
                        "(default: the preset's)")
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: real, pseudoct, ablation")
    args = parser.parse_args()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    skip = {v.strip() for v in args.skip.split(",") if v.strip()}
    subjects, real_csv = make_data(Path(args.shared).resolve(), work)
    common = ["--threads", str(args.threads), "--device", "cpu"]
    common += ["--init", args.init] if args.init else []
    common += ["--preset", args.preset] if args.preset else []
    if RegistrationConfig.preset(args.preset or DEFAULT_PRESET).applies("weights"):  # network features (accurate)
        common += ["--weights", str(Path(args.shared).resolve() / "models")]
    peers = ["--peers", args.peers] if args.peers else []
    if "real" not in skip:
        voxelopt_eval("dataset", str(real_csv), "--out-dir", str(work / "results_real_ct"), *peers, *common)
    if "pseudoct" not in skip:
        voxelopt_eval("dataset", str(subjects), "--out-dir", str(work / "results_pseudoct"), *peers,
                 "--peer-pairs", str(args.peer_pairs), *common)
    if "ablation" not in skip:
        voxelopt_eval("ablation", str(subjects), "--out-dir", str(work / "ablation_pseudoct"),
                 "--max-pairs", str(args.ablation_pairs), *common)


if __name__ == "__main__":
    main()
