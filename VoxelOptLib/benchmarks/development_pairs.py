"""The development pairs the benchmark scripts share (imported by scripts in this folder).

* ``real_ct_pairs``: the real CT of ``../shared/data/totalseg_ct``: B <- A (inter-patient; B is
  scanned over 40 mm of a 96 mm grid) and Adef <- A (A under a known smooth warp);
* ``pseudoct_pairs``: label-derived pseudo-CT of BTCV subjects, made on first use with
  ``../shared/tools/make_pseudoct.py`` (192x160x256 at 2 mm) into ``WORK/pseudoct``;
* ``make_pseudoct``: the pseudo-CT of any BTCV label files, made once into a folder (every
  benchmark script that needs pseudo-CT makes it here);
* ``add_pair_arguments`` / ``development_pairs``: a protocol's WORK_DIR, ``--shared`` and
  ``--pseudo-pairs``, and the pairs they give;
* ``chosen_names``: the comma-separated candidates or variants of a protocol's command line;
* ``preset_protocol_arguments`` / ``preset_config``: the command line of a protocol over the
  presets, and a preset's configuration with the network weights of ``../shared``;
* ``machine_line``: the processor, its vector extensions, the cores and the load, printed with
  every table of timings (the hosts of one machine type differ: OBELISK's convolutions took 5.0 s
  per image on one without AVX-512 and 2.2 s on one with it, the rest of a registration the same).

A pair is ``(name, fixed_image, moving_image, fixed_labels, moving_labels)``, paths.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

Pair = Tuple[str, Path, Path, Path, Path]
#: ``../shared`` beside the repository.
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared"


def add_keep_freed_memory_option(parser: argparse.ArgumentParser) -> None:
    """``--keep-freed-memory``: measure as the ``voxelopt`` command runs (freed memory kept for
    reuse, :func:`voxelopt.allocator.keep_freed_memory`) instead of as a library caller; applied
    by :func:`apply_keep_freed_memory` once the arguments are parsed."""
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed memory for reuse first, as the voxelopt command does (voxelopt.allocator)")


def apply_keep_freed_memory(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Keep freed memory for reuse when ``--keep-freed-memory`` was given (a parser error where
    the C library cannot: not glibc)."""
    if args.keep_freed_memory:
        from voxelopt.allocator import keep_freed_memory

        if not keep_freed_memory():
            parser.error("--keep-freed-memory needs glibc's mallopt (Linux with glibc)")


def machine_line() -> str:
    """One line naming the processor (``/proc/cpuinfo``'s model name where it exists), its widest
    vector extensions (AVX2, AVX-512, AMX: oneDNN's convolutions and numba's kernels use them),
    the cores and the load average: timings are comparable only on the same processor, idle."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    extensions = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags]
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"machine: {model}, {', '.join(extensions) or 'vector extensions unknown'}, {os.cpu_count()} cores, "
            f"load average {load}")


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a protocol on the development pairs: ``WORK_DIR`` (where the pseudo-CT is
    made), ``--shared`` and ``--pseudo-pairs`` (fixed-moving BTCV subjects)."""
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--pseudo-pairs", default="1-2,3-4,5-6", help="fixed-moving BTCV subjects")


def preset_protocol_arguments(description: str) -> Tuple[argparse.Namespace, List[str]]:
    """The parsed command line of a protocol that runs presets on the development pairs: the
    pair arguments and ``--presets`` (comma-separated, default all four), and the preset names."""
    from voxelopt.config import PRESETS

    parser = argparse.ArgumentParser(description=description)
    add_pair_arguments(parser)
    parser.add_argument("--presets", default="abdomen,fast,paper,accurate")
    args = parser.parse_args()
    return args, chosen_names(parser, args.presets, PRESETS, "preset")


def preset_config(preset: str, shared: Path, **overrides):
    """The preset's ``RegistrationConfig`` with ``overrides`` (config fields), a network preset
    reading its weights from ``SHARED/models`` unless the overrides give them."""
    from voxelopt import RegistrationConfig

    config = RegistrationConfig.preset(preset, **overrides)
    if config.applies("weights") and config.weights is None:
        config = config.replace(weights=str(shared / "models"))
    return config


def development_pairs(args: argparse.Namespace) -> List[Pair]:
    """The real CT pairs and the pseudo-CT pairs of :func:`add_pair_arguments`' arguments."""
    pseudo = [tuple(int(v) for v in p.split("-")) for p in args.pseudo_pairs.split(",") if p]
    return real_ct_pairs(args.shared) + pseudoct_pairs(args.shared, args.work_dir, pseudo)


def real_ct_pairs(shared: Path) -> List[Pair]:
    real = shared / "data" / "totalseg_ct"
    return [(f"real {fixed} <- {moving}",) + tuple(real / f"{case}_{kind}.nii.gz" for kind in ("img", "lab") for case in (fixed, moving))
            for fixed, moving in (("B", "A"), ("Adef", "A"))]


def make_pseudoct(shared: Path, out_dir: Path, label_files: Sequence[Path], quiet: bool = True) -> List[Tuple[Path, Path]]:
    """Label-derived pseudo-CT (``SHARED/tools/make_pseudoct.py``, 192x160x256 at 2 mm) of each
    BTCV label file, made into ``out_dir`` unless it is there already; returns the (image,
    labels) paths per file, named ``caseNNNN_img/lab.nii.gz`` after ``labelNNNN.nii.gz``."""
    out_dir = Path(out_dir)
    stems = [Path(f).name.split(".")[0].replace("label", "case") for f in label_files]
    todo = [str(f) for f, stem in zip(label_files, stems) if not (out_dir / f"{stem}_img.nii.gz").exists()]
    if todo:
        subprocess.run([sys.executable, str(shared / "tools" / "make_pseudoct.py"), str(out_dir)] + todo, check=True,
                       capture_output=quiet)
    return [(out_dir / f"{stem}_img.nii.gz", out_dir / f"{stem}_lab.nii.gz") for stem in stems]


def btcv_labels(shared: Path, subject: int) -> Path:
    """The label file of BTCV training subject ``subject`` in ``SHARED/data/btcv_labels``."""
    return shared / "data" / "btcv_labels" / f"label{subject:04d}.nii.gz"


def pseudoct_pairs(shared: Path, work: Path, pairs: Sequence[Tuple[int, int]]) -> List[Pair]:
    """Pseudo-CT pairs (fixed subject, moving subject), the images made into ``WORK/pseudoct`` if needed."""
    subjects = sorted({s for pair in pairs for s in pair})
    made = dict(zip(subjects, make_pseudoct(shared, work / "pseudoct", [btcv_labels(shared, s) for s in subjects])))
    return [(f"case{f:04d} <- case{m:04d}", made[f][0], made[m][0], made[f][1], made[m][1]) for f, m in pairs]


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--repeat``, ``--threads``)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {number}")
    return number


def chosen_names(parser: argparse.ArgumentParser, text: str, known: Iterable[str], what: str) -> List[str]:
    """The names in the comma-separated ``text``, each one of ``known`` (else ``parser.error``
    naming the unknown ``what``)."""
    known = list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what}: {unknown}; choose from {known}")
    return names
