"""Metrics of a given registration output (``voxelopt evaluate``; the dataset harness
``voxelopt_eval`` scores every method's field with :func:`evaluate_field` too).

Conventions: fields are displacement fields on the fixed grid in LPS mm with the resampling
direction ``warped(x) = moving(x + d(x))``; label maps are warped with nearest neighbour and
scored by :mod:`voxelopt.metrics` (labels present in both the fixed and the moving map).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError
from .inputs import checked_label_values
from .geometry import (
    Grid,
    check_field_image,
    image_to_mm_field,
    mm_to_voxel_field,
    resample_image,
    resize_volume,
)
from .metrics import jacobian_determinant, jacobian_statistics, registration_label_metrics
from .outputs import GridField, warp_image
from . import voxels

_CPU = torch.device("cpu")


@voxels.stable_views()
def evaluate_labels(fixed_labels: sitk.Image, moving_labels: sitk.Image, warped_labels: sitk.Image) -> Dict[str, Any]:
    """Dice and HD95 (mm) of an already warped label map against the fixed labels.

    ``warped_labels`` must be on the fixed labels' grid, or on a grid the fixed labels are a
    block of (their image's: they count as background outside it); ``moving_labels`` (any grid) says which
    labels are scored and gives the "initial" score (resampled onto the fixed grid, identity in
    physical space). Label maps are checked as ``register`` checks them
    (:func:`voxelopt.inputs.checked_label_values`; the warped map may be empty).
    """
    fixed_labels, moving_labels = _checked_pair(fixed_labels, moving_labels)
    warped_labels = checked_label_values(warped_labels, "warped labels", allow_empty=True)
    fixed_grid, warped_grid = Grid.from_image(fixed_labels), Grid.from_image(warped_labels)
    if not fixed_grid.same_as(warped_grid, tol=1e-4):
        if not warped_grid.holds(fixed_grid):
            raise InputError("the warped labels must be on the fixed labels' grid (same size, spacing, origin, "
                             "direction) or on a grid the fixed labels are a block of (their image's)")
        fixed_grid = warped_grid  # fixed labels cropped from it: background outside their block
        fixed_labels = resample_image(fixed_labels, fixed_grid, None, sitk.sitkNearestNeighbor, 0)
    initial = resample_image(moving_labels, fixed_grid, None, sitk.sitkNearestNeighbor, 0)
    return registration_label_metrics(voxels.view(fixed_labels), voxels.view(moving_labels),
                                      voxels.view(initial), voxels.view(warped_labels),
                                      fixed_grid.spacing[::-1])


def _checked_pair(fixed_labels: sitk.Image, moving_labels: sitk.Image) -> Tuple[sitk.Image, sitk.Image]:
    return (checked_label_values(fixed_labels, "fixed labels"), checked_label_values(moving_labels, "moving labels"))


@voxels.stable_views()
def evaluate_field(fixed_labels: Optional[sitk.Image], moving_labels: Optional[sitk.Image], field: sitk.Image,
                   scale: float = 1.0) -> Dict[str, Any]:
    """Metrics of ``field`` (LPS mm on the fixed grid, ``warped(x) = moving(x + field(x))``).

    The Jacobian statistics describe the field on its own grid; the label scores are computed on
    the fixed labels' grid (grown to the field's box when they are cropped from the fixed image's
    grid, :func:`scoring_grid`). Both are *evaluation grids*: the grid itself when ``scale`` is 1,
    else that box with ``scale`` times the voxels per axis (:meth:`Grid.scaled`; the official
    code's protocol uses 0.5). The fixed labels are resampled there with nearest neighbour, and
    the moving labels (at ``scale`` 1 as they are, else resampled with nearest neighbour onto
    their own grid scaled the same way) are warped through the field by ``register``'s own warp
    (:func:`voxelopt.outputs.warp_image`, nearest, the field sampled as ITK samples it).

    Args:
        fixed_labels, moving_labels: the label maps (each on its own grid), or both None (then
            only the Jacobian statistics).
        field: the displacement field.
        scale: evaluation grid size relative to the field's grid.

    Returns:
        ``grid_size``, ``grid_spacing_mm``, the Jacobian statistics of
        :func:`voxelopt.metrics.jacobian_statistics` and, with labels, those of
        :func:`voxelopt.metrics.registration_label_metrics` ("initial": the moving labels
        resampled without the field).
    """
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("give both the fixed and the moving labels, or neither")
    check_field_image(field, "the displacement field")
    field_grid = Grid.from_image(field)
    if fixed_labels is not None:
        fixed_labels, moving_labels = _checked_pair(fixed_labels, moving_labels)
        label_grid = Grid.from_image(fixed_labels)
        if not field_grid.covers(label_grid):  # ITK would read no displacement (0) there: "after" = "before"
            raise InputError("the displacement field does not cover the fixed labels' grid: give the field of this "
                             f"registration, on the fixed image's box (field box {box_text(field_grid)}, fixed "
                             f"labels' box {box_text(label_grid)}, LPS mm)")
    grid = evaluation_grid(field_grid, scale)
    d = resize_volume(image_to_mm_field(field, _CPU), grid.shape)
    metrics: Dict[str, Any] = {"grid_size": list(grid.size), "grid_spacing_mm": [round(v, 6) for v in grid.spacing]}
    metrics.update(jacobian_statistics(jacobian_determinant(mm_to_voxel_field(d, grid)).numpy()))
    if fixed_labels is not None:
        grid = evaluation_grid(scoring_grid(label_grid, field_grid), scale)
        fixed_np = evaluation_grid_labels(fixed_labels, grid)
        moving_eval = moving_labels if scale == 1.0 else resample_image(
            moving_labels, evaluation_grid(Grid.from_image(moving_labels), scale), None, sitk.sitkNearestNeighbor, 0)
        # warped by register()'s own warp (the same samples, so the same score for the same field)
        warped = warp_image(moving_eval, GridField.from_image(field, _CPU), grid, nearest=True, default=0)
        initial = resample_image(moving_eval, grid, None, sitk.sitkNearestNeighbor, 0)
        metrics.update(registration_label_metrics(fixed_np, voxels.view(moving_labels), voxels.view(initial),
                                                  voxels.view(warped), grid.spacing[::-1]))
    return metrics


def box_text(grid: Grid) -> str:
    """The physical extent of ``grid``'s voxel centres along x, y, z (LPS mm) for a message."""
    corners = grid.corners()
    return " x ".join(f"[{lo:.0f}, {hi:.0f}]" for lo, hi in zip(corners.min(axis=0), corners.max(axis=0)))


def scoring_grid(labels_grid: Grid, field_grid: Grid) -> Grid:
    """The grid fixed labels on ``labels_grid`` are scored on, for a field on ``field_grid``: their
    own, or, when they are a block (:meth:`Grid.holds`) of the grid with their voxels that fills
    the field's box (the fixed image's box: a label map cropped from its image's grid), that
    whole grid, where they count as background outside their block. ``register`` scores on the
    fixed image's grid with the fixed labels put on it, so the two give one score for one field."""
    whole = field_grid.with_spacings(labels_grid.spacing)
    return whole if whole.holds(labels_grid) else labels_grid


def evaluation_grid(grid: Grid, scale: float) -> Grid:
    """``grid`` itself (``scale`` 1) or its box with ``scale`` times the voxels per axis."""
    return grid if scale == 1.0 else grid.scaled(scale)


def evaluation_grid_labels(labels: sitk.Image, grid: Grid) -> np.ndarray:
    """``labels`` resampled onto ``grid`` with nearest neighbour, as an int32 (Z, Y, X) array."""
    return voxels.copy(resample_image(labels, grid, None, sitk.sitkNearestNeighbor, 0)).astype(np.int32)
