"""Visual quality checks of a registration: checkerboard and difference of fixed vs warped.

Both images are on the fixed volume's grid (the warped volume is written there by the Logic), so
the pictures are plain voxel-wise combinations, stored as new scalar volumes with the fixed
volume's geometry and window. The warped segmentation's outlines over the fixed CT are set by the
Logic (see :func:`.segmentations.show_outlines`).
"""

import numbers

import numpy as np

from .errors import InputNodeError
from .volumes import ROLE_ATTRIBUTE, array_from_volume_node, node_geometry_ras, same_geometry, set_volume_array


def _pair(fixed_volume, warped_volume):
    if not same_geometry(fixed_volume, warped_volume):
        raise InputNodeError(
            f"'{warped_volume.GetName()}' is not on the grid of '{fixed_volume.GetName()}'; choose the warped volume of this registration"
        )
    return array_from_volume_node(fixed_volume).astype(np.float32), array_from_volume_node(warped_volume).astype(np.float32)


def _new_volume(fixed_volume, array: np.ndarray, name: str, role: str):
    scene = fixed_volume.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    set_volume_array(node, array, *node_geometry_ras(fixed_volume))
    node.CopyOrientation(fixed_volume)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.CreateDefaultDisplayNodes()
    source = fixed_volume.GetDisplayNode()
    if source is not None and source.GetColorNodeID():
        node.GetDisplayNode().SetAndObserveColorNodeID(source.GetColorNodeID())  # grey, as the fixed volume
    return node


def checkerboard_volume(fixed_volume, warped_volume, square_mm: float = 20.0):
    """A new volume alternating fixed and warped voxels in cubes of ``square_mm`` millimetres (fixed grid axes).

    Edges that continue across the squares show a good alignment. The fixed volume's window is copied.
    """
    if isinstance(square_mm, bool) or not isinstance(square_mm, numbers.Real) or not square_mm > 0:
        raise ValueError(f"the checkerboard's square size must be a number of millimetres > 0, got {square_mm!r}")
    fixed, warped = _pair(fixed_volume, warped_volume)
    spacing_kji = np.array(fixed_volume.GetSpacing())[::-1]
    index = np.indices(fixed.shape, sparse=True)
    parity = sum((axis * spacing // square_mm).astype(np.int64) for axis, spacing in zip(index, spacing_kji)) % 2
    node = _new_volume(fixed_volume, np.where(parity == 0, fixed, warped), f"{warped_volume.GetName()} checkerboard", "checkerboard")
    source, target = fixed_volume.GetDisplayNode(), node.GetDisplayNode()
    if source is not None:
        target.SetAutoWindowLevel(False)
        target.SetWindowLevel(source.GetWindow(), source.GetLevel())
    return node


def difference_volume(fixed_volume, warped_volume):
    """A new volume ``warped - fixed`` (intensity units of the inputs, e.g. HU), grey around 0."""
    fixed, warped = _pair(fixed_volume, warped_volume)
    difference = warped - fixed
    node = _new_volume(fixed_volume, difference, f"{warped_volume.GetName()} difference", "difference")
    scale = float(np.percentile(np.abs(difference), 99)) or 1.0
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevelMinMax(-scale, scale)
    return node
