"""Metrics of a given registration output (``voxelopt evaluate``)."""

from __future__ import annotations

from typing import Any, Dict

import SimpleITK as sitk

from .geometry import Grid
from .metrics import label_metrics


def evaluate_labels(fixed_labels: sitk.Image, warped_labels: sitk.Image) -> Dict[str, Any]:
    """Dice and HD95 (mm) of a warped label map against the fixed labels (same grid required)."""
    from .errors import InputError

    if not Grid.from_image(fixed_labels).same_as(Grid.from_image(warped_labels), tol=1e-4):
        raise InputError("the warped labels must be on the fixed labels' grid (same size, spacing, origin, direction)")
    spacing_zyx = fixed_labels.GetSpacing()[::-1]
    return label_metrics(sitk.GetArrayFromImage(fixed_labels), sitk.GetArrayFromImage(warped_labels), spacing_zyx)


def evaluate_field(fixed_labels: sitk.Image, moving_labels: sitk.Image, field: sitk.Image) -> Dict[str, Any]:
    """Metrics of ``field`` (ITK resampling convention, LPS mm, on the fixed grid): the moving
    labels warped through it with nearest neighbour against the fixed labels (Dice, HD95, before
    and after), and the field's Jacobian statistics.

    This is the dataset evaluation's full-resolution protocol, so ``voxelopt evaluate`` and
    ``voxelopt evaluate-dataset`` score a field with the same code.
    """
    from .evaluation_dataset.protocols import evaluate_field as evaluate_with_protocol

    return evaluate_with_protocol(field, fixed_labels, moving_labels, "full")
