"""Input checks of images and displacement fields (numpy and SimpleITK only: no torch).

Every check raises :class:`~voxelopt.errors.InputError` with a message naming the input
(``what``) and the problem.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .. import voxels

#: Tolerance on ``D^T D = I`` for a direction matrix D.
ORTHONORMAL_TOLERANCE = 1e-4


def check_geometry(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], what: str) -> None:
    """Raise unless spacing is finite and > 0 mm, the origin finite and the 3x3 direction
    matrix (row-major, columns = axis directions, any handedness) orthonormal.

    A sheared or scaled direction matrix is refused even when its determinant is +-1.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{what} has an invalid spacing {_numbers(spacing)} (must be finite and > 0 mm)")
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not np.allclose(matrix.T @ matrix, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise InputError(
            f"{what} has an invalid direction matrix: its axes are not orthonormal (sheared, scaled or "
            f"not finite): {_numbers(matrix)}"
        )
    if not np.all(np.isfinite(origin)):
        raise InputError(f"{what} has a non-finite origin {_numbers(origin)}")


def _numbers(values) -> Tuple[float, ...]:
    """``values`` flattened to plain floats, for messages (numpy scalars print as ``np.float64(2.0)``)."""
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())


def check_image(image: sitk.Image, what: str, values: bool = False, scalar: bool = True) -> None:
    """Raise unless ``image`` is a 3-D SimpleITK image (with ``scalar``, of one component per
    voxel) with a usable geometry (:func:`check_geometry`) and, with ``values``, no NaN or
    infinite voxel."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"{what} must be a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise InputError(f"{what} must be a 3-D image, got {image.GetDimension()}-D")
    if scalar and image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    check_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), what)
    if values:
        bad = nonfinite_count(voxels.view(image))
        if bad:
            raise InputError(f"{what} contains {bad} NaN or infinite voxel(s); fix or mask them first")


def nonfinite_count(array: np.ndarray) -> int:
    """The NaN or infinite values of ``array`` (0 for integer arrays), counted a few MB of its
    leading axis at a time: no full-size temporary (a float32 512x512x600 CT would need two
    157 MB boolean ones)."""
    if array.dtype.kind != "f":
        return 0
    step = max(1, (4 << 20) // max(1, array[0].size)) if array.ndim else 1
    slabs = (array[start:start + step] for start in range(0, array.shape[0], step)) if array.ndim else (array,)
    return sum(int(slab.size - np.count_nonzero(np.isfinite(slab))) for slab in slabs)


def check_field_image(image: sitk.Image, what: str = "a displacement field") -> None:
    """Raise unless ``image`` is a 3-D image with 3 components per voxel (x, y, z mm)."""
    if image.GetNumberOfComponentsPerPixel() != 3 or image.GetDimension() != 3:
        raise InputError(f"{what} must be a 3-D image with 3 components (x, y, z mm)")
