"""The ``voxelopt`` command line.

Subcommands:
  register   register MOVING onto FIXED; writes field, warped image(s), entropy, Jacobian, metrics
  evaluate   metrics of a field (or of a warped label map) against fixed labels
  demo       make an abdominal phantom pair, register it, write outputs and a PNG overview
  features   the displacement-entropy distribution of each feature type for a pair (paper Fig. 1)

Dataset evaluation and the ablation table are the separate ``voxelopt-eval`` command
(package ``voxelopt_eval``).

Errors a user can cause print one ``error: ...`` line and exit with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


from . import __version__
from .allocator import keep_freed_memory
from .config import DEFAULT_PRESET, PRESET_DESCRIPTIONS, SCHEMA, Parameter, RegistrationConfig
from .errors import InputError, InputWarning, VoxelOptError
from .formats import (FIELD_FORMATS, FIELD_GRIDS, IMAGE_FORMATS, OUTPUTS, check_format, check_outputs,
                      every_output_file_name, output_file_names)
from .output_dir import atomic_output_dir, check_output_dir, check_output_targets, input_at


# ============================================================================ parameters
def _float_list(text: str) -> List[float]:
    """Numbers separated by commas or spaces; an empty item between commas (``50,,5``, ``5,``)
    is a mistake, not a shorter list. An empty text is an empty list (the config says why that
    is not allowed where it is not)."""
    if not text.strip():
        return []
    try:
        if any(not item.strip() for item in text.split(",")):
            raise ValueError
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


def _seed(text: str) -> int:
    """A random seed: a whole number >= 0 (numpy's generators take no negative seed)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _option_help(spec: Parameter) -> str:
    """The help of a schema parameter: meaning, range, when it applies, preset values."""
    parts = [spec.description()]
    values = [("default", spec.default)] + [(name, value) for name, value in spec.presets.items()]
    parts.append(", ".join(f"{name}: {_value_text(value, spec.shape)}" for name, value in values))
    return "; ".join(parts).replace("%", "%%")


def _value_text(value: Any, shape: str = "scalar") -> str:
    """A value as it is typed on the command line: a pair as two words, a list with commas."""
    if isinstance(value, (tuple, list)):
        return (" " if shape == "pair" else ",").join(f"{v:g}" for v in value)
    return "none" if value is None else str(value)


def _option_keywords(spec: Parameter) -> Dict[str, Any]:
    """argparse keywords (type, nargs, choices, metavar with the unit) of a schema parameter."""
    unit = spec.unit.upper()
    if spec.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    if spec.shape == "pair":
        return {"nargs": 2, "type": spec.type, "metavar": (f"LOW_{unit}" if unit else "LOW", f"HIGH_{unit}" if unit else "HIGH")}
    if spec.shape == "list":
        return {"type": _float_list, "metavar": "X1,X2,..."}
    if spec.type is str:
        if spec.choices and spec.also_accepts is None:
            return {"choices": spec.choices}
        if spec.choices:
            return {"metavar": "{" + ",".join(spec.choices + (spec.also_accepts[1].strip("'"),)) + "}"}
        return {"metavar": "PATH" if spec.optional else "NAME"}
    metavar = unit or ("N" if spec.type is int else "X")
    if spec.optional:
        return {"type": _optional_float, "metavar": f"{metavar}|none"}
    return {"type": spec.type, "metavar": metavar}


#: The parameters ``voxelopt features`` uses (features, grids, the finest level's search radius,
#: the entropy's beta, the initial alignment); the solver's are not offered there, and the feature
#: types come from ``--types``.
FEATURE_DIAGNOSTIC_PARAMETERS = ("hu_window", "mind_radius", "mind_dilation", "weights", "feature_spacing",
                                 "working_scale", "k", "k_finest", "beta", "padding_mask", "init", "device")


def add_registration_options(parser: argparse.ArgumentParser, names: Optional[Sequence[str]] = None) -> None:
    """Add ``--preset`` and one option per :class:`RegistrationConfig` field (from :data:`SCHEMA`),
    or per field in ``names`` only (a command that uses only those: the others would be ignored).

    Options left out keep the preset's value: they are absent from the parsed namespace; read
    them with :func:`config_from_options`.
    """
    group = parser.add_argument_group("registration parameters (default: the preset's value)")
    presets = "; ".join(f"{name}: {text}" for name, text in PRESET_DESCRIPTIONS.items())
    group.add_argument("--preset", default=DEFAULT_PRESET, help=f"parameter preset (default: {DEFAULT_PRESET}). {presets}")
    for spec in SCHEMA.values():
        if names is not None and spec.name not in names:
            continue
        group.add_argument("--" + spec.name.replace("_", "-"), dest=spec.name, default=argparse.SUPPRESS,
                           help=_option_help(spec), **_option_keywords(spec))


def config_from_options(args: argparse.Namespace) -> RegistrationConfig:
    """The preset of ``args.preset`` with every option the user gave applied on top (validated).

    An option given that has no effect with the resulting parameters (e.g. ``--refine-weight``
    with ``--preset fast``, which turns the refinement off) is an :class:`InputWarning` naming
    the option and when it applies: the run goes on, but the user learns that it was ignored."""
    given = {name: value for name, value in vars(args).items() if name in SCHEMA}
    config = RegistrationConfig.preset(args.preset, **given)
    for name in given:
        if not config.applies(name):
            warnings.warn(f"--{name.replace('_', '-')} has no effect in this run: it applies only "
                          f"{SCHEMA[name].applies_text} (preset {args.preset} and the options given)", InputWarning)
    return config


# ============================================================================ helpers
def _progress_printer(quiet: bool, start: float = 0.0, end: float = 1.0):
    """``report(fraction, message)`` printing one ``[ 42.0%] message`` line, ``fraction`` (0-1) of a
    stage mapped onto ``start``-``end`` of the whole command."""
    def report(fraction: float, message: str) -> None:
        if not quiet:
            print(f"[{100 * (start + (end - start) * fraction):5.1f}%] {message}", flush=True)
    return report


#: The share of ``voxelopt register``'s progress line given to the registration; the rest is
#: writing the files (and drawing ``--overview``): 10-20 % of the whole at native CT size.
REGISTRATION_SHARE = 0.9


def _print_summary(result) -> None:
    metrics, timings = result.metrics, result.timings
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
    print(f"device: {result.device}")
    print(f"time: {stages}")
    plain = metrics["sdlogj_plain"]  # NaN when no voxel has J > 0 (a field folded everywhere)
    plain_text = "no voxel with J > 0" if math.isnan(plain) else f"{plain:.4f}"
    line = f"SDlogJ {metrics['sdlogj']:.4f} (plain {plain_text}), folding {metrics['folding_percent']:.4f}%"
    if "dice_mean" in metrics and not metrics.get("labels"):
        line = "Dice and HD95: nothing scored (no label in both label maps), " + line
    elif "dice_mean" in metrics:
        line = f"Dice {metrics['dice_initial_mean']:.4f} -> {metrics['dice_mean']:.4f}, HD95 {metrics['hd95_mm_mean']:.2f} mm, " + line
    print(line)


#: File types the overview picture may be written as (by matplotlib).
OVERVIEW_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _checked_overview(path: str) -> Path:
    """The ``--overview`` path, checked before any work: a picture file in a folder that can be written."""
    overview = Path(path)
    if overview.is_dir():
        raise InputError(f"--overview {path} is a folder; give a file name ending in .png")
    if overview.suffix.lower() not in OVERVIEW_FORMATS:
        raise InputError(f"--overview {path}: give a file name ending in {', '.join(OVERVIEW_FORMATS)}")
    check_output_dir(overview.parent, "--overview folder")
    return overview


def _warn_unused_output_options(args: argparse.Namespace, outputs: Optional[Tuple[str, ...]]) -> None:
    """An :class:`InputWarning` for each output option that shapes no file of ``outputs`` (None:
    all), e.g. ``--field-format h5`` with ``--outputs warped``: the run goes on."""
    if outputs is None:
        return
    unused = []
    if "field" not in outputs:
        unused += [f"--field-format {args.field_format}"] if args.field_format != "nii.gz" else []
        unused += [f"--field-grid {args.field_grid}"] if args.field_grid != "working" else []
    if not set(outputs) & {"warped", "labels", "entropy", "jacobian"} and args.image_format != "nii.gz":
        unused.append(f"--image-format {args.image_format}")
    if not set(outputs) & {"entropy", "jacobian"} and args.full_size_maps:
        unused.append("--full-size-maps")
    for option in unused:
        warnings.warn(f"{option} has no effect: --outputs {','.join(outputs)} writes no file it applies to",
                      InputWarning)


# ============================================================================ subcommands
def cmd_register(args: argparse.Namespace) -> int:
    config = config_from_options(args)
    outputs = check_outputs(args.outputs, bool(args.moving_labels))
    image_format = check_format(args.image_format, IMAGE_FORMATS, "image")
    field_format = check_format(args.field_format, FIELD_FORMATS, "field")
    _warn_unused_output_options(args, outputs)
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    inputs = [args.fixed, args.moving, args.fixed_labels, args.moving_labels, args.fixed_mask, args.moving_mask,
              args.initial_transform]
    written = output_file_names(outputs or OUTPUTS, image_format, field_format).values()
    check_output_targets(out_dir, written, every_output_file_name(), inputs)  # e.g. an input named warped.nii.gz
    if args.overview:
        overview = _checked_overview(args.overview)
        check_output_targets(overview.parent, [overview.name], (), inputs)
    if args.feature_cache:
        check_output_dir(Path(args.feature_cache), "--feature-cache directory")
    from .io import read_images  # numpy and SimpleITK: only once the arguments are good

    fixed, moving, fixed_labels, moving_labels, fixed_mask, moving_mask = read_images([
        (args.fixed, "fixed image"), (args.moving, "moving image"), (args.fixed_labels or None, "fixed labels"),
        (args.moving_labels or None, "moving labels"), (args.fixed_mask or None, "fixed mask"),
        (args.moving_mask or None, "moving mask")])
    from .pipeline import register  # imports torch once the inputs are checked (during the affine stage)

    cache = None
    if args.feature_cache:
        from .cache import FeatureCache  # torch

        cache = FeatureCache(directory=args.feature_cache)
    report = _progress_printer(args.quiet, 0.0, REGISTRATION_SHARE)
    result = register(fixed, moving, config, fixed_labels, moving_labels, progress=report, cache=cache,
                      initial_transform=args.initial_transform, fixed_mask=fixed_mask, moving_mask=moving_mask,
                      warp_moving=outputs is None or "warped" in outputs or bool(args.overview))
    # the picture is drawn first, into its folder's staging area, and moved in once the outputs
    # are: a failure or Ctrl-C on either side leaves both folders as they were
    with (atomic_output_dir(overview.parent, inputs=inputs) if args.overview else contextlib.nullcontext()) as staging:
        report = _progress_printer(args.quiet, REGISTRATION_SHARE, 1.0)
        if args.overview:
            from .overview import result_note, save_overview

            report(0.0, f"drawing {overview.name}")
            save_overview(staging / overview.name, fixed, moving, result.warped, fixed_labels, result.warped_labels,
                          result.jacobian, result.entropy, note=result_note(result))
        paths = result.save(out_dir, image_format=image_format, field_format=field_format, outputs=outputs,
                            field_grid=args.field_grid, full_size_maps=args.full_size_maps, progress=report,
                            inputs=inputs)
    if args.overview:
        paths["overview"] = overview
    if not args.quiet:
        _print_summary(result)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.warped_labels and args.field:
        raise InputError("give either --field or --warped-labels, not both (the field is scored by warping "
                         "--moving-labels through it; warped labels are scored as they are)")
    if not args.warped_labels and not args.field:
        raise InputError("give --field (a displacement field to warp --moving-labels through) or --warped-labels")
    inputs = [args.fixed_labels, args.moving_labels, args.warped_labels, args.field]
    if args.out:
        if Path(args.out).is_dir():
            raise InputError(f"--out {args.out} is a folder; give a file name (e.g. metrics.json)")
        check_output_dir(Path(args.out).parent, "--out folder")
        source = input_at(args.out, inputs)
        if source is not None:
            raise InputError(f"--out {args.out} is one of the inputs ({source}): writing the metrics there "
                             "would replace it; give another file name")
    from .evaluation import evaluate_field, evaluate_labels  # torch: only once the arguments are good
    from .io import json_safe, read_field, read_image

    fixed_labels = read_image(args.fixed_labels, "fixed labels")
    moving_labels = read_image(args.moving_labels, "moving labels")
    if args.warped_labels:
        metrics = evaluate_labels(fixed_labels, moving_labels, read_image(args.warped_labels, "warped labels"))
    else:
        metrics = evaluate_field(fixed_labels, moving_labels, read_field(args.field))
    text = json.dumps(json_safe(metrics), indent=2)  # standard JSON: a NaN score is null
    if args.out:
        out = Path(args.out)
        with atomic_output_dir(out.parent, inputs=inputs) as staging:
            (staging / out.name).write_text(text, encoding="utf-8")
    print(text)
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    config = config_from_options(args)
    from .diagnostics import entropy_distributions, feature_list, plot_entropy_distributions
    from .io import read_image

    names = feature_list(args.types)
    if not names:
        raise InputError("--types needs at least one feature type, e.g. raw,mind")
    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    results = entropy_distributions(read_image(args.fixed, "fixed image"), read_image(args.moving, "moving image"),
                                    names, config)
    with atomic_output_dir(out_dir, inputs=[args.fixed, args.moving]) as staging:
        (staging / "entropy.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        plot_entropy_distributions(results, staging / "entropy.png")
    for name, stats in results.items():
        print(f"{name:>20s}: mean {stats['mean']:.3f} nats ({100 * stats['relative_mean']:.1f}% of ln L), "
              f"median {stats['median']:.3f}, p10 {stats['p10']:.3f}, p90 {stats['p90']:.3f}")
    print(f"wrote {out_dir / 'entropy.json'} and {out_dir / 'entropy.png'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    config = config_from_options(args)
    from .io import write_image
    from .overview import result_note, save_overview
    from .phantom import phantom_pair
    from .pipeline import register

    out_dir = Path(args.out_dir)
    check_output_dir(out_dir)
    report = _progress_printer(args.quiet)
    report(0.0, "making an abdominal phantom pair (moving = phantom, fixed = phantom under a smooth random warp)")
    pair = phantom_pair(size=(128, 112, 96), spacing=(2.5, 2.5, 2.5), max_displacement_mm=10.0, seed=args.seed)
    result = register(pair.fixed, pair.moving, config, pair.fixed_labels, pair.moving_labels, progress=report)
    with atomic_output_dir(out_dir) as staging:  # moved in after the outputs, as register's --overview
        for name, image in (("fixed", pair.fixed), ("moving", pair.moving), ("fixed_labels", pair.fixed_labels),
                            ("moving_labels", pair.moving_labels), ("true_field", pair.true_field)):
            write_image(image, staging / f"{name}.nii.gz")
        save_overview(staging / "overview.png", pair.fixed, pair.moving, result.warped, pair.fixed_labels,
                      result.warped_labels, result.jacobian, result.entropy, note=result_note(result))
        paths = result.save(out_dir)
    if not args.quiet:
        _print_summary(result)
        print(f"wrote {len(paths) + 6} files to {out_dir} (overview: {out_dir / 'overview.png'})")
    return 0


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``voxelopt`` parser."""
    parser = argparse.ArgumentParser(prog="voxelopt", description="VoxelOpt deformable registration of abdominal CT.")
    parser.add_argument("--version", action="version", version=f"voxelopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("register", help="register MOVING onto FIXED",
                       description="Register MOVING onto FIXED. Writes DIR/field.nii.gz (displacement in LPS mm on the "
                                   "solver's grid over the fixed image's box, warped(x) = moving(x + field(x))), "
                                   "warped.nii.gz (on the fixed grid, the moving pixel type), warped_labels.nii.gz "
                                   "(with --moving-labels), entropy.nii.gz, jacobian.nii.gz and metrics.json.")
    p.add_argument("fixed", help="fixed image: a file (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM series")
    p.add_argument("moving", help="moving image: a file or a folder holding one DICOM series")
    p.add_argument("--out-dir", required=True, help="output directory")
    p.add_argument("--fixed-labels", help="fixed label map (for Dice/HD95)")
    p.add_argument("--moving-labels", help="moving label map (warped with nearest neighbour)")
    p.add_argument("--image-format", default="nii.gz", help=f"format of the output images: {', '.join(IMAGE_FORMATS)}")
    p.add_argument("--field-format", default="nii.gz", help=f"format of the field: {', '.join(FIELD_FORMATS)} (h5 = ITK transform)")
    p.add_argument("--outputs", default=None, metavar="A,B,...",
                   help=f"what to write, from {','.join(OUTPUTS)} (default: all; 'labels' = the warped moving labels, "
                        "written when --moving-labels is given)")
    p.add_argument("--field-grid", choices=FIELD_GRIDS, default="working",
                   help="grid of the written field: 'working' (its own grid: the solver's, the fixed box at "
                        "--feature-spacing x --working-scale, 4 mm by default) or 'fixed' (the full fixed grid, for "
                        "tools that need that)")
    p.add_argument("--full-size-maps", action="store_true",
                   help="write the entropy and Jacobian maps on the fixed grid (default: on their own coarser grids)")
    p.add_argument("--fixed-mask", metavar="MASK", help="label map of the fixed image's voxels to use in the cost "
                   "(nonzero = use; e.g. leave out a tumour, metal or the table)")
    p.add_argument("--moving-mask", metavar="MASK", help="likewise for the moving image")
    p.add_argument("--initial-transform", metavar="TFM",
                   help="an ITK linear transform file (.tfm/.txt/.h5/.mat) mapping fixed to moving points: the initial "
                        "alignment with --init none, the start of --init affine")
    p.add_argument("--overview", metavar="PNG", help="also write a picture to check the result: fixed, moving before and "
                   "after, checkerboard, difference, organ outlines (with labels), in radiological orientation")
    p.add_argument("--feature-cache", metavar="DIR", help="keep features, the affine alignment and the scores "
                   "before registration on disk in DIR and reuse them across runs")
    p.add_argument("--quiet", action="store_true", help="print nothing but warnings and errors")
    add_registration_options(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("evaluate", help="metrics of a field or warped labels against fixed labels",
                       description="Dice and HD95 of the moving labels, as they lie and after a registration "
                                   "(warped through --field, or --warped-labels as given), against the fixed "
                                   "labels, with register's scoring rule; prints JSON (and writes it with --out).")
    p.add_argument("--fixed-labels", required=True, help="fixed label map")
    p.add_argument("--field", help="displacement field (image or .h5 transform; LPS mm, warped(x) = moving(x + field(x))) as register writes it, on its own grid or the fixed grid; it must cover the fixed labels' box")
    p.add_argument("--moving-labels", required=True,
                   help="moving label map: warped through --field; the labels scored are those present in it and in "
                        "the fixed labels; the 'initial' scores are of this map as it lies (no transform), whereas "
                        "register's are after its initial alignment")
    p.add_argument("--warped-labels", help="an already warped moving label map on the fixed grid (instead of --field)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("features", help="displacement-entropy distribution per feature type (paper Fig. 1)",
                       description="For each feature type, the entropy of the displacement distribution of the "
                                   "pair on the working grid after its initial alignment only (--init: the "
                                   "preset's, affine for abdomen; none for the pair as it lies), before any "
                                   "deformable registration: low entropy = the features single out displacements. "
                                   "Writes DIR/entropy.json and DIR/entropy.png.")
    p.add_argument("fixed", help="fixed image file")
    p.add_argument("moving", help="moving image file")
    p.add_argument("--types", default="raw,mind", help="comma-separated feature types (default: raw,mind)")
    p.add_argument("--out-dir", required=True, help="output directory")
    add_registration_options(p, FEATURE_DIAGNOSTIC_PARAMETERS)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("demo", help="register a generated abdominal phantom pair (no downloads)")
    p.add_argument("--out-dir", default="voxelopt-demo", help="output directory (default: ./voxelopt-demo)")
    p.add_argument("--seed", type=_seed, default=0, help="phantom and deformation seed, >= 0 (default: 0)")
    p.add_argument("--quiet", action="store_true", help="print nothing but warnings and errors")
    add_registration_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the chosen subcommand's ``func``; a user error prints one ``error:``
    line and returns 2, an input warning one ``warning:`` line, Ctrl-C prints ``error:
    interrupted`` and returns 130, a closed standard output (``| head``) returns 141 without a
    traceback. Shared with ``voxelopt-eval``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _show_input_warnings()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except VoxelOptError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of standard output left (``| head``): stop quietly, as a shell tool does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the final flush does not fail again
        except (AttributeError, OSError, ValueError):  # no file descriptor (standard output replaced)
            pass
        return 141  # 128 + SIGPIPE


def _show_input_warnings() -> None:
    """Print :class:`InputWarning` as one ``warning:`` line on standard error (other warnings as Python prints them)."""
    original = warnings.showwarning
    if getattr(original, "voxelopt_input_warnings", False):
        return  # installed by an earlier main() of this process

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (the hook's signature)
        if issubclass(category, InputWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            original(message, category, filename, lineno, file, line)

    show.voxelopt_input_warnings = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``voxelopt`` command line; returns the exit status (2: a user error, 130: interrupted)."""
    keep_freed_memory()  # this process is ours: reuse freed arrays instead of page-faulting them in again
    try:
        return run_command(build_parser(), argv)
    except KeyboardInterrupt:  # while the parser is built
        print("error: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """The ``voxelopt`` command (and ``python -m voxelopt.cli``): :func:`main`, then the process
    ends at once, without Python's teardown, which spent about 0.5 s freeing a registration's
    arrays and modules (measured on 2 cores: 0.6-0.7 s between the command's return and the
    process's end, 0.2 s with this). By then every file is written, closed and moved into place
    and no other thread is working (an affine stage still running after Ctrl-C is simply
    stopped); standard output and error are flushed first. An unexpected exception (a bug)
    leaves the normal way, with its traceback."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (e.g. ``| head``) or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
