"""The ``voxelopt`` command line.

Subcommands:
  register   register MOVING onto FIXED; writes field, warped image(s), entropy, Jacobian, metrics
  evaluate   metrics of a field (or of a warped label map) against fixed labels
  demo       make an abdominal phantom pair, register it, write outputs and a PNG overview
  features   the displacement-entropy distribution of each feature type for a pair (paper Fig. 1)
  evaluate-dataset   register many pairs (VoxelOpt and optional peers); results.csv / results.md
  evaluate-ablation  the paper's ablation table (feature type, k, adaptive, cost filtering)

Errors a user can cause print one ``error: ...`` line and exit with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


from . import __version__
from .cache import FeatureCache
from .config import INIT_MODES, PRESETS, SIGMA_MODES, RegistrationConfig
from .errors import InputError, VoxelOptError
from .io import FIELD_FORMATS, IMAGE_FORMATS, atomic_output_dir, check_format, read_field, read_image, write_image


# ============================================================================ parameters
def _float_list(text: str) -> List[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None


def _optional_float(text: str) -> Optional[float]:
    if text.lower() in ("none", "native"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _add_parameter_options(parser: argparse.ArgumentParser) -> None:
    """One option per RegistrationConfig field; unset options keep the preset's value."""
    g = parser.add_argument_group("registration parameters (default: the preset's value)")
    g.add_argument("--preset", default="paper", help=f"parameter preset: {', '.join(sorted(PRESETS))} (default: paper)")
    g.add_argument("--features", help="feature type: raw, mind, a network name, or several joined with '+'")
    g.add_argument("--weights", help="network weights file for network features")
    g.add_argument("--hu-window", nargs=2, type=float, metavar=("LOW", "HIGH"), help="intensity window in HU")
    g.add_argument("--mind-radius", type=int, help="MIND-SSC patch radius (voxels)")
    g.add_argument("--mind-dilation", type=int, help="MIND-SSC neighbour distance (voxels)")
    g.add_argument("--feature-spacing", type=_optional_float, default=argparse.SUPPRESS, metavar="MM",
                   help="isotropic spacing of the feature grid in mm, or 'none' for the fixed grid")
    g.add_argument("--working-scale", type=float, help="solver resolution as a fraction of the feature grid")
    g.add_argument("--levels", type=int, help="pyramid levels (1-7)")
    g.add_argument("--k", type=int, help="search radius in voxels: (2k+1)^3 offsets")
    g.add_argument("--beta", type=float, help="entropy softmax sharpness")
    g.add_argument("--sigma-mode", choices=SIGMA_MODES, help="entropy-to-sigma mapping")
    g.add_argument("--alpha", type=float, help="sigma cap of the paper's sigma form (voxels)")
    g.add_argument("--sigma-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help="sigma range of the code's form (voxels)")
    g.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=None, help="voxel-adaptive message passing")
    g.add_argument("--fixed-sigma", type=float, help="sigma of the non-adaptive filter (voxels)")
    g.add_argument("--filter-cost", action=argparse.BooleanOptionalAction, default=None, help="pre-filter the cost volume")
    g.add_argument("--smoothing-passes", type=int, help="filter passes per smoothing")
    g.add_argument("--thetas", type=_float_list, help="coupling schedule, e.g. 150,50,15,5,1.5,0.5")
    g.add_argument("--ss-steps", type=int, help="scaling-and-squaring steps (0 = off)")
    g.add_argument("--refine-iterations", type=int, help="Adam steps refining the final field (0 = off)")
    g.add_argument("--refine-weight", type=float, help="smoothness weight of the refinement")
    g.add_argument("--init", choices=INIT_MODES, help="initial alignment")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")


_OPTION_TO_FIELD = {
    "features": "features", "weights": "weights", "hu_window": "hu_window", "mind_radius": "mind_radius",
    "mind_dilation": "mind_dilation", "feature_spacing": "feature_spacing", "working_scale": "working_scale",
    "levels": "levels", "k": "k", "beta": "beta", "sigma_mode": "sigma_mode", "alpha": "alpha",
    "sigma_range": "sigma_range", "adaptive": "adaptive", "fixed_sigma": "fixed_sigma",
    "filter_cost": "filter_cost", "smoothing_passes": "smoothing_passes", "thetas": "thetas",
    "ss_steps": "ss_steps", "refine_iterations": "refine_iterations", "refine_weight": "refine_weight",
    "init": "init", "device": "device",
}


def config_from_args(args: argparse.Namespace) -> RegistrationConfig:
    """The preset with every option the user gave applied on top."""
    overrides: Dict[str, Any] = {}
    for option, field in _OPTION_TO_FIELD.items():
        if hasattr(args, option) and getattr(args, option) is not None:
            overrides[field] = getattr(args, option)
    if "feature_spacing" in vars(args):  # SUPPRESS default: present only when given
        overrides["feature_spacing"] = args.feature_spacing
    return RegistrationConfig.preset(args.preset, **overrides)


# ============================================================================ helpers
def check_output_dir(path: Path) -> None:
    """Fail before any work if ``path`` cannot be created or written (creates nothing)."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"output path {existing} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output directory {path} cannot be written (no write permission on {existing})")


def _progress_printer(quiet: bool):
    def report(fraction: float, message: str) -> None:
        if not quiet:
            print(f"[{100 * fraction:5.1f}%] {message}", flush=True)
    return report


def _print_summary(result) -> None:
    metrics, timings = result.metrics, result.timings
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    print(f"device: {result.device}")
    print(f"time: {stages}")
    line = f"SDlogJ {metrics['sdlogj']:.4f} (plain {metrics['sdlogj_plain']:.4f}), folding {metrics['folding_percent']:.4f}%"
    if "dice_mean" in metrics:
        line = f"Dice {metrics['dice_initial_mean']:.4f} -> {metrics['dice_mean']:.4f}, HD95 {metrics['hd95_mm_mean']:.2f} mm, " + line
    print(line)


# ============================================================================ subcommands
def cmd_register(args: argparse.Namespace) -> int:
    from .pipeline import register

    config = config_from_args(args)
    image_format = check_format(args.image_format, IMAGE_FORMATS, "image")
    field_format = check_format(args.field_format, FIELD_FORMATS, "field")
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    fixed = read_image(args.fixed, "fixed image")
    moving = read_image(args.moving, "moving image")
    fixed_labels = read_image(args.fixed_labels, "fixed labels") if args.fixed_labels else None
    moving_labels = read_image(args.moving_labels, "moving labels") if args.moving_labels else None
    cache = FeatureCache(directory=args.feature_cache) if args.feature_cache else None
    result = register(fixed, moving, config, fixed_labels, moving_labels, progress=_progress_printer(args.quiet), cache=cache)
    paths = result.save(out_dir, image_format=image_format, field_format=field_format)
    if not args.quiet:
        _print_summary(result)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_field, evaluate_labels

    fixed_labels = read_image(args.fixed_labels, "fixed labels")
    if args.warped_labels:
        if args.field or args.moving_labels:
            raise InputError("give either --warped-labels, or --field with --moving-labels, not both")
        metrics = evaluate_labels(fixed_labels, read_image(args.warped_labels, "warped labels"))
    else:
        if not (args.field and args.moving_labels):
            raise InputError("give --warped-labels, or --field together with --moving-labels")
        metrics = evaluate_field(fixed_labels, read_image(args.moving_labels, "moving labels"), read_field(args.field))
    text = json.dumps(metrics, indent=2)
    if args.out:
        out = Path(args.out)
        check_output_dir(out.parent)
        with atomic_output_dir(out.parent) as staging:
            (staging / out.name).write_text(text)
    print(text)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .diagnostics import entropy_distributions, feature_list, plot_entropy_distributions

    names = feature_list(args.types)
    if not names:
        raise InputError("--types needs at least one feature type, e.g. raw,mind")
    config = config_from_args(args)
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    results = entropy_distributions(read_image(args.fixed, "fixed image"), read_image(args.moving, "moving image"),
                                    names, config)
    with atomic_output_dir(out_dir) as staging:
        (staging / "entropy.json").write_text(json.dumps(results, indent=2))
        plot_entropy_distributions(results, staging / "entropy.png")
    for name, stats in results.items():
        print(f"{name:>20s}: mean {stats['mean']:.3f} nats ({100 * stats['relative_mean']:.1f}% of ln L), "
              f"median {stats['median']:.3f}, p10 {stats['p10']:.3f}, p90 {stats['p90']:.3f}")
    print(f"wrote {out_dir / 'entropy.json'} and {out_dir / 'entropy.png'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .overview import result_note, save_overview
    from .phantom import phantom_pair
    from .pipeline import register

    config = config_from_args(args)
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    report = _progress_printer(args.quiet)
    report(0.0, "making an abdominal phantom pair (moving = phantom, fixed = phantom under a smooth random warp)")
    pair = phantom_pair(size=(128, 112, 96), spacing=(2.5, 2.5, 2.5), max_displacement_mm=10.0, seed=args.seed)
    result = register(pair.fixed, pair.moving, config, pair.fixed_labels, pair.moving_labels, progress=report)
    paths = result.save(out_dir)
    with atomic_output_dir(out_dir) as staging:
        for name, image in (("fixed", pair.fixed), ("moving", pair.moving), ("fixed_labels", pair.fixed_labels),
                            ("moving_labels", pair.moving_labels), ("true_field", pair.true_field)):
            write_image(image, staging / f"{name}.nii.gz")
        save_overview(staging / "overview.png", pair.fixed, pair.moving, result.warped, pair.fixed_labels,
                      result.warped_labels, result.jacobian, result.entropy, note=result_note(result))
    if not args.quiet:
        _print_summary(result)
        print(f"wrote {len(paths) + 6} files to {out_dir} (overview: {out_dir / 'overview.png'})")
    return 0


def cmd_evaluate_dataset(args: argparse.Namespace) -> int:
    from .evaluation_dataset.command import evaluate_dataset_command

    return evaluate_dataset_command(args, config_from_args(args))


def cmd_evaluate_ablation(args: argparse.Namespace) -> int:
    from .evaluation_dataset.command import evaluate_ablation_command

    return evaluate_ablation_command(args, config_from_args(args))


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxelopt", description="VoxelOpt deformable registration of abdominal CT.")
    parser.add_argument("--version", action="version", version=f"voxelopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("register", help="register MOVING onto FIXED",
                       description="Register MOVING onto FIXED. Writes DIR/field.nii.gz (displacement in LPS mm on the "
                                   "fixed grid, warped(x) = moving(x + field(x))), warped.nii.gz, warped_labels.nii.gz "
                                   "(with --moving-labels), entropy.nii.gz, jacobian.nii.gz and metrics.json.")
    p.add_argument("fixed", help="fixed image file")
    p.add_argument("moving", help="moving image file")
    p.add_argument("--out-dir", required=True, help="output directory")
    p.add_argument("--fixed-labels", help="fixed label map (for Dice/HD95)")
    p.add_argument("--moving-labels", help="moving label map (warped with nearest neighbour)")
    p.add_argument("--image-format", default="nii.gz", help=f"format of the output images: {', '.join(IMAGE_FORMATS)}")
    p.add_argument("--field-format", default="nii.gz", help=f"format of the field: {', '.join(FIELD_FORMATS)} (h5 = ITK transform)")
    p.add_argument("--feature-cache", metavar="DIR", help="keep features on disk in DIR and reuse them across runs")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_parameter_options(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="metrics of a field or warped labels against fixed labels")
    p.add_argument("--fixed-labels", required=True, help="fixed label map")
    p.add_argument("--field", help="displacement field (image or .h5 transform) on the fixed grid")
    p.add_argument("--moving-labels", help="moving label map, warped through --field")
    p.add_argument("--warped-labels", help="an already warped moving label map on the fixed grid")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("features", help="displacement-entropy distribution per feature type (paper Fig. 1)",
                       description="For each feature type, the entropy of the displacement distribution of the "
                                   "unregistered pair on the working grid: low entropy = the features single out "
                                   "displacements. Writes DIR/entropy.json and DIR/entropy.png.")
    p.add_argument("fixed", help="fixed image file")
    p.add_argument("moving", help="moving image file")
    p.add_argument("--types", default="raw,mind", help="comma-separated feature types (default: raw,mind)")
    p.add_argument("--out-dir", required=True, help="output directory")
    _add_parameter_options(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("demo", help="register a generated abdominal phantom pair (no downloads)")
    p.add_argument("--out-dir", default="voxelopt-demo", help="output directory (default: ./voxelopt-demo)")
    p.add_argument("--seed", type=int, default=0, help="phantom and deformation seed")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_parameter_options(p)
    p.set_defaults(func=cmd_demo)

    from .evaluation_dataset.command import add_ablation_arguments, add_dataset_arguments

    p = sub.add_parser("evaluate-dataset", help="evaluate VoxelOpt (and peers) on many pairs",
                       description="Register every pair of a CSV (or all ordered pairs of a subject list) and write "
                                   "DIR/results.csv and DIR/results.md: Dice, HD95, SDlogJ, folding and times per pair "
                                   "and on average. Re-runs resume; a failing pair is reported and the rest go on.")
    add_dataset_arguments(p)
    _add_parameter_options(p)
    p.set_defaults(func=cmd_evaluate_dataset)

    p = sub.add_parser("evaluate-ablation", help="the paper's ablation table (Table 2) on many pairs")
    add_ablation_arguments(p)
    _add_parameter_options(p)
    p.set_defaults(func=cmd_evaluate_ablation)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VoxelOptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
