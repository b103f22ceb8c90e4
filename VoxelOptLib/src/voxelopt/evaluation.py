"""Metrics of a given registration output (``voxelopt evaluate``)."""

from __future__ import annotations

from typing import Any, Dict

import SimpleITK as sitk
import torch

from .geometry import Grid, image_to_mm_field, mm_to_voxel_field
from .metrics import jacobian_determinant, jacobian_statistics, label_metrics


def evaluate_labels(fixed_labels: sitk.Image, warped_labels: sitk.Image) -> Dict[str, Any]:
    """Dice and HD95 (mm) of a warped label map against the fixed labels (same grid required)."""
    from .errors import InputError

    if not Grid.from_image(fixed_labels).same_as(Grid.from_image(warped_labels), tol=1e-4):
        raise InputError("the warped labels must be on the fixed labels' grid (same size, spacing, origin, direction)")
    spacing_zyx = fixed_labels.GetSpacing()[::-1]
    return label_metrics(sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(warped_labels), spacing_zyx)


def evaluate_field(fixed_labels: sitk.Image, moving_labels: sitk.Image, field: sitk.Image) -> Dict[str, Any]:
    """Warp ``moving_labels`` through ``field`` (ITK resampling convention, mm) onto the fixed
    labels' grid with nearest neighbour, then Dice/HD95, plus the field's Jacobian statistics."""
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving_labels, fixed_labels, transform, sitk.sitkNearestNeighbor, 0, moving_labels.GetPixelID())
    metrics = evaluate_labels(fixed_labels, warped)
    u = mm_to_voxel_field(image_to_mm_field(field, torch.device("cpu")), Grid.from_image(field))
    metrics.update(jacobian_statistics(jacobian_determinant(u).numpy()))
    return metrics
