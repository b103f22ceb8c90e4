"""Compiled CPU kernels for the full-grid warps (optional: ``numba``, in the extra ``fast``).

On the CPU, PyTorch's ``grid_sample`` runs a scalar loop for 3-D volumes (25-38 ms per million
points on 2 cores) and samples float32 only, so the torch path of
:func:`voxelopt.outputs.warp_images_streamed` first converts each block of moving voxels it reads.
:func:`warp_slab` interpolates the field, reads the moving voxels in their own pixel type,
interpolates them in float64 and writes the output type, point by point with no intermediate
arrays: a whole 512x512x600 int16 CT warp in 11-14 ms per million points on 2 cores, against
28-31 ms for the torch path (see the README's *Performance*). Its rules are the torch path's
and ITK's.

Cost: numba compiles the kernel once per pixel type (about 0.8 s; the machine code is cached on
disk, beside this module or in the user's cache directory) and each process loads it once
(about 0.45 s with numba's import). So a warp uses the kernel only when it is worth that:
:func:`worth_it` (the kernel already loaded, or a fixed grid of at least :data:`MIN_POINTS`
voxels).
``VOXELOPT_COMPILED=0`` in the environment turns the kernels off (A/B benchmarks, tests).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np

#: Fixed-grid points from which a warp loads the kernel in a process that has not yet: about
#: 0.45 s of loading (numba's import and the cached machine code) against about 17 ms saved per
#: million points (a 512x512x600 CT warp: 28-31 ms per million with torch, 11-14 with the
#: kernel; 2 cores), so it pays from about 26 M points.
MIN_POINTS = 30_000_000

_lock = threading.Lock()
_kernel = None  # the loaded kernel, or False when numba is not installed or turned off


def enabled() -> bool:
    """Whether the kernels can run here: numba installed and ``VOXELOPT_COMPILED`` not ``0``."""
    if os.environ.get("VOXELOPT_COMPILED", "1") == "0":
        return False
    if _kernel is not None:
        return _kernel is not False
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def worth_it(points: int) -> bool:
    """Whether a warp of ``points`` fixed-grid points should use :func:`warp_slab` (see the
    module); loads the kernel when the answer is yes (False if that fails)."""
    return enabled() and (bool(_kernel) or (points >= MIN_POINTS and bool(_load())))


def _load():
    """The kernel, loaded (compiled the first time) once per process; False when numba cannot
    provide it (not installed, incompatible with this numpy, no cache location), with a warning
    in the last two cases: the warps then use torch."""
    global _kernel
    with _lock:
        if _kernel is None:
            try:
                from . import _numba_kernels

                _kernel = _numba_kernels.warp_rows
            except ImportError as error:
                _kernel = False
                if importlib.util.find_spec("numba") is not None:
                    warnings.warn(f"the compiled warp kernel is unavailable ({error}); warping with torch")
            except Exception as error:  # e.g. numba's "cannot cache function ...: no locator available"
                _kernel = False
                warnings.warn(f"the compiled warp kernel is unavailable ({error}); warping with torch")
    return _kernel


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
    kernel = _load() if enabled() else False
    if not kernel:
        raise RuntimeError("compiled kernels are not available (numba is not installed or VOXELOPT_COMPILED=0)")
    if source.ndim != 3 or out.ndim != 3 or where.field.ndim != 4 or where.field.shape[0] != 3:
        raise ValueError(f"warp_slab: source {source.shape}, out {out.shape}, field {where.field.shape}")
    if any(s + n > len(axis[0]) for s, n, axis in zip(start, out.shape, (where.z, where.y, where.x))):
        raise ValueError(f"warp_slab: out {out.shape} at {start} is beyond the fixed grid")
    integer = np.issubdtype(out.dtype, np.integer)
    low, high = (float(np.iinfo(out.dtype).min), float(np.iinfo(out.dtype).max)) if integer else (-np.inf, np.inf)
    if integer:
        default = min(max(float(np.rint(default)), low), high)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    rows = out.shape[0] * out.shape[1]
    parts = max(1, min(int(threads), rows))
    bounds = [rows * n // parts for n in range(parts + 1)]
    args = (source, where.field, *where.x, *where.y, *where.z, where.to_moving, where.offset, *start, out,
            float(default), bool(nearest), bool(integer), low, high)
    if parts == 1:
        kernel(*args, 0, rows)
        return
    pool = _row_pool(parts)  # the kernel releases the GIL: the parts run at once
    for future in [pool.submit(kernel, *args, bounds[n], bounds[n + 1]) for n in range(parts)]:
        future.result()


_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0


def _row_pool(threads: int) -> ThreadPoolExecutor:
    """One pool of worker threads for the kernel's rows, kept across slabs and warps (a warp has
    150 slabs at 512x512x600; starting the threads for each cost more as the count grows); made
    anew when more threads are asked for."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="voxelopt-warp"), threads
        return _pool
