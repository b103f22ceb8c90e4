"""The ``voxelopt-eval`` command line: dataset evaluation and the paper's ablation table.

Subcommands:
  dataset    register every pair with VoxelOpt (and optional peers) from one common initial
             alignment; results.csv / results.md
  ablation   the paper's ablation table (feature type, k, adaptive, cost filtering)

The registration options are those of ``voxelopt register`` (:func:`voxelopt.cli.add_registration_options`);
``--init`` is the common initial alignment of every method (``affine``: every method starts from the
centres of mass and VoxelOpt adds its own affine stage, as elastix and ANTs add theirs; ConvexAdam has
none; results.md states each method's stages). Errors a user can cause print one ``error: ...`` line
and exit with status 2; exit status 1 means some pair failed (see results.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from voxelopt import __version__
from voxelopt.allocator import keep_freed_memory
from voxelopt.cli import add_registration_options, config_from_options, run_command
from voxelopt.config import RegistrationConfig
from voxelopt.errors import ConfigError

from .ablation import run_ablation
from .alignment import COMMON_MODES, InitialAlignment
from .methods import voxelopt_spec
from .pairs import read_pairs
from .peers import PEERS, parse_peer_list, peer_spec
from .protocols import PROTOCOLS
from .runner import EvaluationRun, load_method, run_evaluation


def _protocols(text: str) -> List[str]:
    names = ["half", "full"] if text == "both" else [text]
    return names


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by both dataset commands."""
    p.add_argument("pairs", help="CSV with a header row naming its columns: pairs (fixed, moving, fixed_labels, "
                                 "moving_labels[, id, gt_field]) or subjects (image, labels[, id]: all ordered "
                                 "pairs); paths relative to the CSV")
    p.add_argument("--out-dir", required=True, help="output directory (results.csv, results.md, records/)")
    p.add_argument("--workers", type=int, default=1, help="pairs registered in parallel on this machine (process pool)")
    p.add_argument("--scheduler", help="Dask distributed scheduler address (e.g. tcp://host:8786); overrides --workers")
    p.add_argument("--threads", type=int, help="threads per pair, 1 to 4x the CPU cores (default: CPU cores / workers)")
    p.add_argument("--no-resume", action="store_true", help="recompute pairs finished in an earlier run")
    p.add_argument("--max-pairs", type=int, help="only the first N pairs (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (failed pairs are still listed, on stderr)")


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--peers", default="", help=f"comma-separated peers to run as well: {', '.join(PEERS)} "
                                               "(need the 'peers' extra)")
    p.add_argument("--peer-pairs", type=int, help="run the peers only on the first N pairs (they are slow; 0: on none)")
    p.add_argument("--no-voxelopt", action="store_true", help="run only the peers")
    p.add_argument("--protocol", choices=list(PROTOCOLS) + ["both"], default="both",
                   help="half: the official protocol (half of the 2 mm grid, as the paper reports); "
                        "full: the fixed grid; both (default)")


def add_ablation_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--ablation-features", default="raw,mind", help="feature types to compare (default raw,mind)")
    p.add_argument("--ablation-k", default="1,2", help="search radii to compare (default 1,2)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="half", help="protocol of the table (default half)")


def _pairs(args: argparse.Namespace):
    pairs = read_pairs(args.pairs)
    if args.max_pairs is not None:
        if args.max_pairs < 1:
            raise ConfigError(f"--max-pairs must be >= 1, got {args.max_pairs}")
        pairs = pairs[: args.max_pairs]
    return pairs


def _print(run: EvaluationRun, quiet: bool) -> int:
    """The run's summary (not with ``quiet``) and its failed jobs (always: on stderr with ``quiet``)."""
    if not quiet:
        print(f"{run.ran} job(s) run, {run.skipped} resumed, {len(run.failed)} failed")
    for record in run.failed:
        print(f"  FAILED {record['pair_id']} / {record['method']}: {record.get('error', '')}",
              file=sys.stderr if quiet else sys.stdout)
    if not quiet:
        print("wrote " + ", ".join(str(p) for p in run.paths.values()))
    return 1 if run.failed else 0


def _split_init(args: argparse.Namespace) -> Tuple[RegistrationConfig, InitialAlignment]:
    """VoxelOpt's configuration and the common initial alignment every method starts from.

    A translation (``none``, ``centers``, ``com``) is applied to the moving image for every
    method, and VoxelOpt then runs with ``init="none"``. With ``init="affine"`` every method
    starts from the centres of mass and VoxelOpt keeps its own affine stage, as elastix and ANTs
    keep theirs in their standard pipelines (ConvexAdam has none).
    """
    config = config_from_options(args)
    if getattr(args, "scheduler", None) is None:  # pairs run here: a device this machine lacks fails every pair
        from voxelopt.device import resolve_device

        resolve_device(config.device)
    window = tuple(config.hu_window)
    if config.init not in COMMON_MODES:  # VoxelOpt's own stage, from the centres of mass
        return config, InitialAlignment("com", window)
    return config.replace(init="none"), InitialAlignment(config.init, window)


def dataset_command(args: argparse.Namespace) -> int:
    """Body of ``voxelopt-eval dataset``; exit status 1 when any pair failed.

    With ``--peer-pairs N`` below the number of pairs, VoxelOpt runs on every pair (OUT_DIR) and
    all methods on the first N pairs (OUT_DIR/with_peers; none when N is 0).
    """
    if args.peer_pairs is not None and args.peer_pairs < 0:
        raise ConfigError(f"--peer-pairs must be >= 0, got {args.peer_pairs}")
    config, init = _split_init(args)
    pairs = _pairs(args)
    peers = parse_peer_list(args.peers)
    options = dict(workers=args.workers, scheduler=args.scheduler, resume=not args.no_resume,
                   threads=args.threads, progress=not args.quiet, init=init, inputs=[args.pairs])
    methods = [] if args.no_voxelopt else [voxelopt_spec(config)]
    peer_methods = [peer_spec(kind, config.hu_window) for kind in peers]
    if not methods and not peer_methods:
        raise ConfigError("nothing to run: --no-voxelopt without --peers")
    if not methods and args.peer_pairs == 0:
        raise ConfigError("nothing to run: --no-voxelopt leaves only the peers, and --peer-pairs 0 runs them on no pair")
    if peer_methods and args.scheduler is None and args.peer_pairs != 0:
        for kind in peers:  # here, before any pair runs (a scheduler's workers may have what this machine lacks)
            load_method(kind)
    protocols = _protocols(args.protocol)
    title = "Dataset evaluation: " + ", ".join(m.name for m in methods + peer_methods)
    if args.peer_pairs is not None and peer_methods and args.peer_pairs < len(pairs):
        # Peers are slow: all methods on the first N pairs (OUT_DIR/with_peers), VoxelOpt on every pair (OUT_DIR).
        code = 0
        if methods:
            code = _print(run_evaluation(pairs, methods, Path(args.out_dir), protocols, title=title, **options), args.quiet)
        if args.peer_pairs > 0:
            subset = run_evaluation(pairs[: args.peer_pairs], methods + peer_methods, Path(args.out_dir) / "with_peers",
                                    protocols, title=title + f" (first {args.peer_pairs} pairs)", **options)
            code = max(code, _print(subset, args.quiet))
        return code
    run = run_evaluation(pairs, methods + peer_methods, Path(args.out_dir), protocols, title=title, **options)
    return _print(run, args.quiet)


def ablation_command(args: argparse.Namespace) -> int:
    """Body of ``voxelopt-eval ablation``; exit status 1 when any pair failed."""
    config, init = _split_init(args)
    features = [v.strip() for v in args.ablation_features.split(",") if v.strip()]
    try:
        ks = [int(v) for v in args.ablation_k.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--ablation-k must be comma-separated integers, got {args.ablation_k!r}") from None
    run, paths = run_ablation(_pairs(args), args.out_dir, config, features, ks, args.protocol,
                              workers=args.workers, scheduler=args.scheduler, resume=not args.no_resume,
                              threads=args.threads, progress=not args.quiet, init=init, inputs=[args.pairs])
    if not args.quiet:
        print(Path(paths["ablation_md"]).read_text(encoding="utf-8"))
    return _print(run, args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxelopt-eval", description="Evaluate VoxelOpt (and peer tools) on many pairs.")
    parser.add_argument("--version", action="version", version=f"voxelopt-eval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dataset", help="evaluate VoxelOpt (and peers) on many pairs",
                       description="Register every pair of a CSV (or all ordered pairs of a subject list) and write "
                                   "DIR/results.csv and DIR/results.md: Dice, HD95, SDlogJ, folding and times per pair "
                                   "and on average. --init is applied once to the moving image and labels, and every "
                                   "method starts from it (affine: every method starts from the centres of mass and "
                                   "VoxelOpt adds its own affine stage; results.md says what each method does from "
                                   "there). Re-runs resume; a failing pair is reported and the rest go on.")
    add_dataset_arguments(p)
    add_registration_options(p)
    p.set_defaults(func=dataset_command)
    p = sub.add_parser("ablation", help="the paper's ablation table (Table 2) on many pairs")
    add_ablation_arguments(p)
    add_registration_options(p)
    p.set_defaults(func=ablation_command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``voxelopt-eval``; returns the exit status (2: a user error, 130: interrupted)."""
    keep_freed_memory()  # as ``voxelopt`` does: this process is ours
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
