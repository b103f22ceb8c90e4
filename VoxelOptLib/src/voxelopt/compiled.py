"""Compiled CPU kernels for the full-grid warps and the label scores' surface distances
(optional: ``numba``, in the extra ``fast``).

On the CPU, PyTorch's ``grid_sample`` runs a scalar loop for 3-D volumes (25-38 ms per million
points on 2 cores) and samples float32 only, so the torch path of
:func:`voxelopt.outputs.warp_images_streamed` first converts each block of moving voxels it reads.
:func:`warp_slab` interpolates the field, reads the moving voxels in their own pixel type,
interpolates them in float64 and writes the output type, row by row through buffers of a row's
length: a whole 512x512x600 int16 CT warp in 4.4 ms per million points on 2 cores (0.69-0.70 s),
against 28-31 ms for the torch path (see the README's *Performance*). Its rules are the torch
path's and ITK's.

:func:`surface_distances` gives the HD95's nearest-surface distances by exact Euclidean distance
transforms over each label's box instead of KD-tree queries (SciPy's ``cKDTree``, about 4 µs of
CPU per surface point at native CT resolution, most where the surfaces lie far apart, as before
registration).

Cost: numba compiles the kernels once (about 1 s per warp pixel type; the machine code is
cached on disk, beside this module or in the user's cache directory) and each process loads them
once (about 0.4 s with numba's import and the first call). So a warp or a score uses them only
when it is worth that: :func:`worth_it` (the kernels already loaded, or a fixed grid of at least
:data:`MIN_POINTS` voxels).
``VOXELOPT_COMPILED=0`` in the environment turns the kernels off (A/B benchmarks, tests).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Fixed-grid points from which a warp or a score loads the kernels in a process that has not
#: yet: about 0.4 s of loading (numba's import, the cached machine code of the first signature)
#: against about 22 ms saved per million points of a CT warp (28-31 ms per million with torch,
#: about 7 with the kernel; 2 cores), plus the label warp and the HD95. Measured on whole
#: ``voxelopt register`` commands with labels (2 cores, three alternations each): 512x512x100
#: (26 M) 5.75-5.89 -> 5.22-5.34 s, 512x512x60 (15.7 M) 5.30-5.57 -> 5.15-5.18 s, the paper's
#: 192x160x256 (7.9 M) 5.63-5.98 -> 5.66-5.77 s (no gain): from 12 M.
MIN_POINTS = 12_000_000

_lock = threading.Lock()
_kernels = None  # the loaded kernels (module voxelopt._numba_kernels), or False when numba is not installed or turned off
_KERNELS = ("warp_rows", "surface_marks", "overlap_counts", "distance_sweep_axis0", "distance_envelope_axis1",
            "distance_at_points_axis2")


def enabled() -> bool:
    """Whether the kernels can run here: numba installed and ``VOXELOPT_COMPILED`` not ``0``."""
    if os.environ.get("VOXELOPT_COMPILED", "1") == "0":
        return False
    if _kernels is not None:
        return _kernels is not False
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def worth_it(points: int) -> bool:
    """Whether a warp or a score on a fixed grid of ``points`` voxels should use the kernels (see
    the module); loads them when the answer is yes (False if that fails)."""
    return enabled() and (bool(_kernels) or (points >= MIN_POINTS and bool(_load())))


def preload() -> bool:
    """Load the kernels now if they can run here (:func:`enabled`), so that a timed run that uses
    them does not pay the loading (about 0.4 s once per process); afterwards :func:`worth_it`
    says yes for every grid, as it does after a first large one. Returns whether they are loaded."""
    return enabled() and bool(_load())


def warm_up(points: int) -> bool:
    """Pay now the one-time loading that the first compiled warp or score of a process would pay
    on a fixed grid of ``points`` voxels: when :func:`worth_it` (which imports numba and the
    kernels: about 0.2 s), also the machine code of one small kernel from numba's disk cache
    (the first cached kernel a process runs costs about 0.25 s, each further one a few ms;
    2-core CPU, 2026-12-07). For a caller with a core that would otherwise idle (the pipeline
    runs it on a thread beside the cost masks). Returns whether the kernels are loaded."""
    if not worth_it(points):
        return False
    surface_voxels(np.zeros((2, 2, 2), np.uint8)[:, :, :1], threads=1)  # a box view, as the scores pass
    return True


def _load():
    """The kernels, loaded (compiled the first time) once per process; False when numba cannot
    provide them (not installed, incompatible with this numpy, no cache location), with a warning
    in the last two cases: the warps then use torch, the scores SciPy's KD-tree."""
    global _kernels
    unavailable = "the compiled kernels are unavailable ({}); warping with torch, scoring with SciPy"
    with _lock:
        if _kernels is None:
            try:
                from . import _numba_kernels

                missing = [name for name in _KERNELS if not hasattr(_numba_kernels, name)]
                if missing:
                    raise AttributeError(f"voxelopt._numba_kernels has no {', '.join(missing)}")
                _kernels = _numba_kernels
            except ImportError as error:
                _kernels = False
                if importlib.util.find_spec("numba") is not None:
                    warnings.warn(unavailable.format(error))
            except Exception as error:  # e.g. numba's "cannot cache function ...: no locator available"
                _kernels = False
                warnings.warn(unavailable.format(error))
    return _kernels


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """Where each fixed-grid voxel reads the moving image, in the kernel's terms: for fixed voxel
    (i, j, k) (array index [k, j, i]), the moving continuous index (channels i, j, k: voxel units
    of the moving array's x, y and z axes) ``q = to_moving @ (i, j, k) + offset + d``, where the
    displacement ``d`` is ``field`` (3, fz, fy, fx; float32; moving-index units) interpolated
    trilinearly at field index (x[i], y[j], z[k]): per fixed axis, over the whole fixed grid,
    the field index below (``lo``, int64), the one above (``hi``) and the weight of ``hi``
    (float64). ITK's ``DisplacementFieldTransform`` interpolation (border values) is what the
    caller encodes in ``lo``/``hi``/``w``; see :func:`voxelopt.outputs._compiled_field_map`."""

    field: np.ndarray
    x: Tuple[np.ndarray, np.ndarray, np.ndarray]
    y: Tuple[np.ndarray, np.ndarray, np.ndarray]
    z: Tuple[np.ndarray, np.ndarray, np.ndarray]
    to_moving: np.ndarray
    offset: np.ndarray

    @classmethod
    def linear(cls, fixed_size: Sequence[int], to_moving: np.ndarray, offset: np.ndarray) -> "FieldMap":
        """The map of a linear alignment alone, ``q = to_moving @ (i, j, k) + offset``, on a fixed
        grid of ``fixed_size`` (i, j, k) voxels: a one-voxel field of zeros."""
        def axis(n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
            return np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)

        x, y, z = (axis(int(n)) for n in fixed_size)
        return cls(np.zeros((3, 1, 1, 1), np.float32), x, y, z, np.ascontiguousarray(to_moving, dtype=np.float64),
                   np.ascontiguousarray(offset, dtype=np.float64))


def warp_slab(source: np.ndarray, where: FieldMap, start: Tuple[int, int, int], out: np.ndarray, default: float,
              nearest: bool, threads: Optional[int] = None) -> None:
    """Warp ``source`` (Z, Y, X), a moving image's voxels in any real pixel type, into ``out``
    (z, y, x; a view may be strided), whose voxel [0, 0, 0] is the fixed-grid voxel
    ``start`` = (k, j, i), reading it where ``where`` says, with ITK's rules: a point more than
    half a voxel outside the image gets ``default``; one within half a voxel takes the border
    value; nearest neighbour rounds halves up; trilinear is computed in float64 and rounded half
    to even and clipped for an integer ``out``. ``threads`` (default: torch's thread count)
    share the rows.

    Raises RuntimeError when the kernels are not available (see :func:`enabled`).
    """
    kernels = _loaded()
    if source.ndim != 3 or out.ndim != 3 or where.field.ndim != 4 or where.field.shape[0] != 3:
        raise ValueError(f"warp_slab: source {source.shape}, out {out.shape}, field {where.field.shape}")
    if any(s + n > len(axis[0]) for s, n, axis in zip(start, out.shape, (where.z, where.y, where.x))):
        raise ValueError(f"warp_slab: out {out.shape} at {start} is beyond the fixed grid")
    integer = np.issubdtype(out.dtype, np.integer)
    low, high = (float(np.iinfo(out.dtype).min), float(np.iinfo(out.dtype).max)) if integer else (-np.inf, np.inf)
    if integer:
        default = min(max(float(np.rint(default)), low), high)
    source = np.ascontiguousarray(source)  # the kernel reads it by flat index (a copy only if it is a strided view)
    exact_in_float32 = source.dtype.itemsize <= 2 or source.dtype == np.float32
    read_type = np.empty(0, np.float32 if exact_in_float32 else np.float64)
    args = (source, where.field, *where.x, *where.y, *where.z, where.to_moving, where.offset, *start, out,
            float(default), bool(nearest), bool(integer), low, high, read_type)
    _in_parts(kernels.warp_rows, args, out.shape[0] * out.shape[1], threads, "warp")


def surface_voxels(labels: np.ndarray, threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The surface voxels of a label map (Z, Y, X; any integer type; a view may be strided): the
    (N, 3) int64 indices (z, y, x; in C order) of the voxels > 0 with a 6-neighbour of another
    value or outside the array, and their values. One pass over the voxels in parallel (the
    torch form of :func:`voxelopt.metrics._surface_voxels` makes ten full-size passes).

    Raises RuntimeError when the kernels are not available (see :func:`enabled`).
    """
    kernels = _loaded()
    if labels.ndim != 3:
        raise ValueError(f"surface_voxels: a 3-D label map is needed, got shape {labels.shape}")
    marks = np.empty(labels.shape, dtype=bool)
    _in_parts(kernels.surface_marks, (labels, marks), labels.shape[0], threads, "distance")
    where = np.unravel_index(np.flatnonzero(marks), labels.shape)
    return np.stack(where, axis=1).astype(np.int64, copy=False), labels[where]


def overlap_counts(fixed: np.ndarray, warped: np.ndarray, size: int, threads: Optional[int] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Per label value ``v`` in ``1 .. size - 1``: the voxels where ``warped`` is ``v`` and those
    where ``fixed`` is ``v`` too (two int64 arrays of length ``size``; index 0 and values outside
    the range are not counted), for two label maps of one shape (Z, Y, X; any integer types;
    views may be strided). One pass over both maps in parallel.

    Raises RuntimeError when the kernels are not available (see :func:`enabled`).
    """
    kernels = _loaded()
    if fixed.shape != warped.shape or fixed.ndim != 3:
        raise ValueError(f"overlap_counts: two 3-D label maps of one shape are needed, got {fixed.shape} and {warped.shape}")
    starts = _part_bounds(warped.shape[0], threads)[:-1]
    counts = np.zeros((len(starts), 2, max(int(size), 1)), np.int64)  # counts of its own per part: no shared writes

    def count_part(start: int, stop: int) -> None:
        kernels.overlap_counts(fixed, warped, counts[starts.index(start)], start, stop)

    # as many threads as parts, so that _in_parts splits at the same starts
    _in_parts(count_part, (), warped.shape[0], len(starts), "distance")
    total = counts.sum(axis=0)
    return total[0], total[1]


Box = Tuple[np.ndarray, Tuple[int, int, int]]  # a box of voxels: its lowest (z, y, x) index and its shape


def surface_distances(pairs: Sequence[Tuple[np.ndarray, np.ndarray]], spacing_zyx: Sequence[float],
                      threads: Optional[int] = None, boxes: Optional[Sequence[Box]] = None
                      ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """For each pair ``(a, b)`` of non-empty voxel sets of one grid ((N, 3) integer (z, y, x)
    indices): the distance in mm from every voxel of ``a`` to the nearest voxel of ``b``, and from
    every voxel of ``b`` to the nearest of ``a`` (in their order) — the nearest-neighbour distances
    of their centres in mm, as a KD-tree gives them (equal to about 10^-13 mm), by exact Euclidean
    distance transforms over the box holding both sets (:func:`joint_box`; ``boxes`` when the
    caller has them already), one box buffer for all pairs.

    Raises RuntimeError when the kernels are not available (see :func:`enabled`).
    """
    if not pairs:
        return []
    kernels = _loaded()
    step2 = [float(s) ** 2 for s in spacing_zyx]
    for a, b in pairs:
        if not len(a) or not len(b):
            raise ValueError("surface_distances: every set must hold at least one voxel")
    if boxes is None:
        boxes = [joint_box(a, b) for a, b in pairs]
    largest = max(int(np.prod(shape)) for _, shape in boxes)
    squared, marks = np.empty(largest), np.zeros(largest, dtype=bool)  # the boxes' working memory
    results = []
    for (a, b), (low, shape) in zip(pairs, boxes):
        size = int(np.prod(shape))
        results.append(tuple(_distances_to(kernels, squared[:size].reshape(shape), marks[:size].reshape(shape),
                                           np.asarray(features, np.int64) - low, np.asarray(queries, np.int64) - low,
                                           step2, threads)
                             for features, queries in ((b, a), (a, b))))
    return results


def joint_box(a: np.ndarray, b: np.ndarray) -> Box:
    """The box holding two non-empty voxel sets ((N, 3) integer indices): its lowest index and
    its shape."""
    low = np.minimum(a.min(axis=0), b.min(axis=0))
    return low, tuple(int(n) for n in np.maximum(a.max(axis=0), b.max(axis=0)) - low + 1)


def _distances_to(kernels, d: np.ndarray, marks: np.ndarray, features: np.ndarray, queries: np.ndarray,
                  step2: Sequence[float], threads: Optional[int]) -> np.ndarray:
    """The distances (mm) from ``queries`` to the nearest of ``features`` (both box indices), with
    ``d`` (float64) and ``marks`` (bool, all False; left so) of the box's shape as working memory."""
    at = (features[:, 0], features[:, 1], features[:, 2])
    marks[at] = True
    try:
        _in_parts(kernels.distance_sweep_axis0, (marks, d, step2[0]), d.shape[1], threads, "distance")
    finally:
        marks[at] = False
    _in_parts(kernels.distance_envelope_axis1, (d, step2[1]), d.shape[0], threads, "distance")
    row = queries[:, 0] * d.shape[1] + queries[:, 1]
    order = None
    linear = row * d.shape[2] + queries[:, 2]
    if np.any(np.diff(linear) < 0):  # surface voxels come in C order; others are sorted into it
        order = np.argsort(linear, kind="stable")
        row, queries = row[order], queries[order]
    first = np.flatnonzero(np.diff(row, prepend=-1))
    rows = row[first]
    out = np.empty(len(row))
    _in_parts(kernels.distance_at_points_axis2, (d, step2[2], rows // d.shape[1], rows % d.shape[1],
                                                 np.append(first, len(row)).astype(np.int64),
                                                 np.ascontiguousarray(queries[:, 2]), out), len(rows), threads, "distance")
    if order is None:
        return out
    unsorted = np.empty_like(out)
    unsorted[order] = out
    return unsorted


def _loaded():
    """The kernels; RuntimeError when they are not available."""
    kernels = _load() if enabled() else False
    if not kernels:
        raise RuntimeError("compiled kernels are not available (numba is not installed or VOXELOPT_COMPILED=0)")
    return kernels


def _in_parts(kernel, args: tuple, count: int, threads: Optional[int], pool: str) -> None:
    """``kernel(*args, start, stop)`` over ``0 .. count - 1`` in one part per thread (default:
    torch's thread count) of the worker pool named ``pool``; the kernels release the GIL, so the
    parts run at once."""
    bounds = _part_bounds(count, threads)
    if len(bounds) == 2:
        kernel(*args, 0, count)
        return
    workers = _worker_pool(pool, len(bounds) - 1)
    for future in [workers.submit(kernel, *args, start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]:
        future.result()


def _part_bounds(count: int, threads: Optional[int]) -> List[int]:
    """Where the parts of ``0 .. count - 1`` start (and the last ends): one part per thread
    (default: torch's thread count), at least one."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    parts = max(1, min(int(threads), count))
    return [count * n // parts for n in range(parts + 1)]


_pools: Dict[str, Tuple[ThreadPoolExecutor, int]] = {}  # name -> (pool, its threads)


def _worker_pool(name: str, threads: int) -> ThreadPoolExecutor:
    """The pool of worker threads named ``name``, kept across calls (a warp has 150 slabs at
    512x512x600; starting the threads for each cost more as the count grows); made anew when more
    threads are asked for. The warps and the distance transforms have a pool each: the label
    scores run beside a warp (:func:`voxelopt.stages.solved_outputs`), and in one pool each would
    wait for the other's parts."""
    with _lock:
        pool, size = _pools.get(name, (None, 0))
        if pool is None or size < threads:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"voxelopt-{name}")
            _pools[name] = (pool, threads)
        return pool
