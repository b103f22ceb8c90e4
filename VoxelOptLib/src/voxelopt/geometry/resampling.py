"""Resampling images between grids with SimpleITK, optionally through the initial alignment
(no torch: the input checks use it before torch is loaded).

The alignment is a 4x4 matrix T (LPS mm) mapping a fixed point x to the moving point T(x), the
direction ``sitk.Resample`` uses: the result at x is ``image(T(x))``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from .grid import Grid


def affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK transform of a 4x4 matrix (fixed -> moving points, mm)."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in np.asarray(matrix)[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in np.asarray(matrix)[:3, 3]))
    return transform


def affine_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """The 4x4 matrix of an affine transform ``y = A (x - c) + t + c``."""
    a = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = a
    matrix[:3, 3] = np.asarray(transform.GetTranslation()) + c - a @ c
    return matrix


def resample_image(
    image: sitk.Image,
    grid: Grid,
    alignment: Optional[np.ndarray] = None,
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    pixel_type: Optional[int] = None,
    extrapolate: bool = False,
) -> sitk.Image:
    """``image`` resampled onto ``grid``, optionally through the 4x4 ``alignment`` (see the module).

    Points outside the image get ``default``, or with ``extrapolate`` the value of the image's
    nearest voxel (its border planes repeated outward). Returns ``image`` itself when the grids
    are identical, there is no alignment and the pixel type (default: the image's) is unchanged.
    """
    pixel_type = image.GetPixelID() if pixel_type is None else pixel_type
    identity = alignment is None or np.allclose(alignment, np.eye(4))
    if identity and pixel_type == image.GetPixelID() and Grid.from_image(image).same_as(grid):
        return image
    transform = sitk.Transform() if identity else affine_transform(alignment)
    return sitk.Resample(image, grid.reference_image(), transform, interpolator, float(default), pixel_type,
                         bool(extrapolate))


def overlap_fraction(fixed_grid: Grid, moving: sitk.Image, alignment: Optional[np.ndarray] = None) -> float:
    """Fraction of the fixed grid's voxels whose point ``T(x)`` lies inside the moving image
    (within half a voxel of its voxel centres, nearest neighbour's reach), counted on the points
    of a grid of at most 32 per axis over the fixed box."""
    coarse = fixed_grid.with_size(np.minimum(fixed_grid.size, 32))
    to_moving, offset = coarse.index_map_to(Grid.from_image(moving), alignment)  # moving index of coarse index p
    p = np.stack(np.meshgrid(*(np.arange(n) for n in coarse.size), indexing="ij"), axis=-1).reshape(-1, 3)
    q = p @ to_moving.T + offset
    size = np.asarray(moving.GetSize(), dtype=np.float64)
    return float(np.mean(np.all((q >= -0.5) & (q < size - 0.5), axis=1)))
