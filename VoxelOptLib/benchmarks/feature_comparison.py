"""Registration accuracy and time of each feature type on the real CT pair A -> Adef.

``Adef`` is ``A`` warped by a known smooth displacement (``Adef(x) = A(x + d(x))``, mm, on A's
grid), so registering A (moving) onto Adef (fixed) has a known answer: the result's field should
equal d. Reported per feature type: mean / 95th-percentile displacement error (mm) inside the body
(fixed HU > -500) and inside the organ labels, mean Dice of the warped labels, the percentage of
folding voxels, and the time of the features and of the whole registration.

Usage (from the repository root; data and weights are read from ../shared)::

    python VoxelOptLib/benchmarks/feature_comparison.py --threads 2 --out feature_comparison.json

(``--features a b ...`` runs a subset; the default is :data:`DEFAULT_FEATURES`.)

Besides the registered feature names, the script accepts these variants (registered here,
for the measurement only): ``obelisk_softmax``, ``obelisk_d144``, ``obelisk_logits_d72``,
``obelisk_s1`` / ``obelisk_s3`` / ``obelisk_s30`` / ``obelisk_s100`` (logits divided by 1, 3, 30
or 100 instead of 10), ``pdd_v01``,
``obelisk_fold2``, ``pdd_s16`` (PDD divided by 16 instead of 4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "VoxelOptLib" / "src"))

import voxelopt  # noqa: E402
from voxelopt.features.base import register_extractor  # noqa: E402
from voxelopt.metrics import label_metrics  # noqa: E402
from voxelopt.networks import pdd as pdd_mod  # noqa: E402
from voxelopt.networks.obelisk import ObeliskExtractor  # noqa: E402
from voxelopt.networks.pdd import PDDExtractor  # noqa: E402

SHARED = REPO.parent / "shared"
#: The rows of the table in README.md, "Pretrained-network features".
DEFAULT_FEATURES = ["raw", "mind", "obelisk", "obelisk_s3", "obelisk_s100", "obelisk_softmax", "obelisk_d144",
                    "obelisk_logits_d72", "obelisk_fold2", "pdd", "pdd_v01", "mind+obelisk", "mind+obelisk_d144",
                    "mind+pdd"]


class _ScaledObelisk(ObeliskExtractor):
    """Logits divided by another constant (measurement of the feature scale only)."""

    def __init__(self, weights, scale: float):
        super().__init__(weights=weights)
        self.scale = scale

    def cache_key(self) -> str:
        return super().cache_key() + f":s{self.scale:g}"

    def _channels_of(self, outputs):
        return [(outputs["logits"], 1.0 / self.scale)]


class _ScaledPDD(PDDExtractor):
    """PDD features divided by another constant (measurement of the feature scale only)."""

    def __init__(self, weights, scale: float):
        super().__init__(weights=weights)
        self.scale = scale

    def cache_key(self) -> str:
        return super().cache_key() + f":x{self.scale:g}"

    def extract(self, image, device):
        return super().extract(image, device) * (pdd_mod.PDD_SCALE / self.scale)


def register_variants(models: Path) -> None:
    """Extra feature names for this measurement."""
    register_extractor("obelisk_softmax", lambda c: ObeliskExtractor(c.weights, mode="softmax"))
    register_extractor("obelisk_d144", lambda c: ObeliskExtractor(c.weights, mode="d144"))
    register_extractor("obelisk_logits_d72", lambda c: ObeliskExtractor(c.weights, mode="logits+d72"))
    register_extractor("obelisk_s1", lambda c: _ScaledObelisk(c.weights, 1.0))
    register_extractor("obelisk_s3", lambda c: _ScaledObelisk(c.weights, 3.0))
    register_extractor("obelisk_fold2", lambda c: ObeliskExtractor(str(models / "obelisk" / "obeliskhybrid_tcia_fold2.pth")))
    register_extractor("pdd_v01", lambda c: PDDExtractor(str(models / "pdd_net" / "dense_reg_feat_v01.pth")))
    register_extractor("obelisk_s30", lambda c: _ScaledObelisk(c.weights, 30.0))
    register_extractor("obelisk_s100", lambda c: _ScaledObelisk(c.weights, 100.0))
    register_extractor("pdd_s16", lambda c: _ScaledPDD(c.weights, 16.0))


def displacement_error(field: sitk.Image, truth: np.ndarray, mask: np.ndarray) -> Dict[str, float]:
    """Mean and 95th percentile of |field - truth| (mm) over ``mask``."""
    d = sitk.GetArrayFromImage(field).astype(np.float64)
    err = np.linalg.norm(d - truth, axis=-1)[mask]
    return {"mean": float(err.mean()), "p95": float(np.percentile(err, 95))}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", default=DEFAULT_FEATURES)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "totalseg_ct")
    parser.add_argument("--models", type=Path, default=SHARED / "models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    missing = [str(args.data / name) for name in ("A_img.nii.gz", "Adef_img.nii.gz") if not (args.data / name).is_file()]
    if missing:
        parser.error(f"missing in --data: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    register_variants(args.models)

    moving = sitk.ReadImage(str(args.data / "A_img.nii.gz"), sitk.sitkFloat32)
    fixed = sitk.ReadImage(str(args.data / "Adef_img.nii.gz"), sitk.sitkFloat32)
    moving_lab = sitk.ReadImage(str(args.data / "A_lab.nii.gz"))
    fixed_lab = sitk.ReadImage(str(args.data / "Adef_lab.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "Adef_gt_disp_mm.nii.gz"))).astype(np.float64)
    body = sitk.GetArrayFromImage(fixed) > -500
    organs = sitk.GetArrayFromImage(fixed_lab) > 0
    zero = np.linalg.norm(truth, axis=-1)
    unmoved = sitk.Resample(moving_lab, fixed_lab, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    identity = label_metrics(sitk.GetArrayViewFromImage(fixed_lab), sitk.GetArrayViewFromImage(moving_lab),
                             sitk.GetArrayViewFromImage(unmoved), fixed_lab.GetSpacing()[::-1])
    rows = [{"features": "none (identity)", "error_body_mm": float(zero[body].mean()),
             "error_body_p95_mm": float(np.percentile(zero[body], 95)), "error_organs_mm": float(zero[organs].mean()),
             "dice_mean": identity["dice_mean"]}]
    print(f"identity: body {rows[0]['error_body_mm']:.2f} mm, organs {rows[0]['error_organs_mm']:.2f} mm", flush=True)
    for name in args.features:
        config = voxelopt.RegistrationConfig.preset(args.preset, features=name, weights=str(args.models), device=args.device)
        start = time.perf_counter()
        result = voxelopt.register(fixed, moving, config=config, fixed_labels=fixed_lab, moving_labels=moving_lab)
        wall = time.perf_counter() - start
        e_body = displacement_error(result.field_image("fixed"), truth, body)
        e_org = displacement_error(result.field_image("fixed"), truth, organs)
        timings = result.timings
        row = {
            "features": name,
            "error_body_mm": e_body["mean"], "error_body_p95_mm": e_body["p95"], "error_organs_mm": e_org["mean"],
            "dice_mean": result.metrics.get("dice_mean"),
            "folding_percent": result.metrics.get("folding_percent"),
            "features_s": timings.get("features_fixed", 0.0) + timings.get("features_moving", 0.0),
            "solver_s": timings.get("solver"), "total_s": wall,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| features | error body (mm) | p95 body (mm) | error organs (mm) | Dice | folding (%) | features (s) | total (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(key, fmt="{:.2f}"):
            v = r.get(key)
            return fmt.format(v) if isinstance(v, (int, float)) and v == v else "-"
        print(f"| {r['features']} | {f('error_body_mm')} | {f('error_body_p95_mm')} | {f('error_organs_mm')} | "
              f"{f('dice_mean', '{:.3f}')} | {f('folding_percent', '{:.2f}')} | {f('features_s', '{:.1f}')} | "
              f"{f('total_s', '{:.1f}')} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "torch": torch.__version__,
                                        "threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
