"""The engine's abdominal CT phantom (:mod:`voxelopt.phantom`) as MRML nodes: the data of the
module's self-test and of the bridge tests. Nothing is downloaded.

The fixed volume is the moving phantom warped by a known smooth field, as in
:func:`voxelopt.phantom.phantom_pair`. Volumes are *oblique* (rotated about z by ``oblique_deg``,
then about x by half of it) and stored with ITK's LPS axes (i pointing left, j posterior), the
hardest case for RAS <-> LPS conversions. Sizes are voxels along (i, j, k), spacings mm; the
default grid holds the whole axial section of the body (with air around it) at a coarse 8-9 mm.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

Geometry = Tuple[Sequence[int], Sequence[float], float]  # size (i, j, k), spacing mm, oblique angle (degrees)


def oblique_direction(angle_deg: float) -> Tuple[float, ...]:
    """Row-major LPS direction matrix: a rotation of ``angle_deg`` about z, then ``angle_deg / 2`` about x."""
    a, b = np.deg2rad(angle_deg), np.deg2rad(angle_deg / 2.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def add_phantom_volumes(
    scene,
    size: Sequence[int] = (40, 34, 24),
    spacing: Sequence[float] = (9.0, 9.0, 8.0),
    oblique_deg: float = 20.0,
    with_segmentations: bool = False,
    max_displacement_mm: float = 10.0,
    moving_geometry: Optional[Geometry] = None,
    seed: int = 0,
) -> Dict[str, object]:
    """Add a phantom pair to ``scene`` as volume nodes "fixed" and "moving" (plus segmentations).

    ``moving_geometry`` = (size, spacing, oblique_deg) gives the moving volume its own grid in the
    same physical space. Returns a dict with keys "fixed", "moving" (vtkMRMLScalarVolumeNode) and,
    with ``with_segmentations``, "fixed_segmentation", "moving_segmentation"
    (vtkMRMLSegmentationNode, segments named after :data:`voxelopt.phantom.LABEL_NAMES`).
    """
    from voxelopt import voxels
    from voxelopt.phantom import LABEL_NAMES, phantom_pair

    from . import segmentations, volumes

    moving_grid = None
    if moving_geometry is not None:
        moving_size, moving_spacing, moving_oblique = moving_geometry
        moving_grid = (moving_size, moving_spacing, oblique_direction(moving_oblique))
    pair = phantom_pair(size, spacing, max_displacement_mm, seed, oblique_direction(oblique_deg), moving_grid)
    nodes: Dict[str, object] = {role: volumes.add_volume_node_from_sitk(scene, getattr(pair, role), role) for role in ("fixed", "moving")}
    if with_segmentations:
        for role in ("fixed", "moving"):
            labels = voxels.copy(getattr(pair, f"{role}_labels"))
            nodes[f"{role}_segmentation"] = segmentations.add_segmentation_from_array(
                scene, f"{role} segmentation", labels, nodes[role], LABEL_NAMES
            )
    return nodes
