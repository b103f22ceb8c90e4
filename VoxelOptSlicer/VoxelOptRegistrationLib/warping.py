"""Using a registration's transform on other nodes: the inverse transform and one-click warping.

The registration transform node stores the field in its **FromParent** (resampling) side: fixed
points -> moving points (see :mod:`.transforms`). Slicer derives the **ToParent** side (moving
points -> fixed points, iterative inverse) from it, and that is what moves models, markups and
segmentations placed under the node. So:

* :func:`warp_nodes` copies nodes of the *moving* space (volumes, segmentations, markups, models)
  into the *fixed* space: volumes and segmentations (as label maps, nearest neighbour) are
  resampled onto the fixed grid through the FromParent field, like the engine's warped outputs;
  markups and models are hardened through the ToParent side.
* :func:`create_inverse_transform` makes the opposite transform node (FromParent: moving -> fixed),
  which shows the fixed volume, or moves fixed-space markups, in the moving space.
"""

from typing import List, Sequence

import slicer

from .errors import InputNodeError
from .segmentations import segment_labels, update_segmentation_from_labels
from .transforms import INTERPOLATION_ATTRIBUTE, set_registration_references
from .volumes import ROLE_ATTRIBUTE, TemporaryNodes, add_volume_node_from_sitk, sitk_from_volume_node

#: Classes :func:`warp_nodes` accepts.
WARPABLE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsNode", "vtkMRMLModelNode")


def _grid_of(transform_node):
    grid = transform_node.GetTransformFromParent()
    if not isinstance(grid, slicer.vtkOrientedGridTransform):
        raise InputNodeError(f"transform '{transform_node.GetName()}' holds no VoxelOpt displacement field")
    return grid


def create_inverse_transform(transform_node, name: str = ""):
    """A new transform node that maps the other way: FromParent moving -> fixed, ToParent fixed -> moving.

    Its ToParent side is an exact copy of the registration's field; its FromParent side is
    Slicer's iterative inverse. Its moving/fixed node references are swapped accordingly.
    """
    grid = _grid_of(transform_node)
    scene = transform_node.GetScene()
    copy = slicer.vtkOrientedGridTransform()
    copy.DeepCopy(grid)
    inverse = scene.AddNewNodeByClass("vtkMRMLTransformNode", name or scene.GenerateUniqueName(f"{transform_node.GetName()} inverse"))
    inverse.SetAndObserveTransformToParent(copy)
    inverse.SetAttribute(ROLE_ATTRIBUTE, "inverseTransform")
    inverse.SetAttribute(INTERPOLATION_ATTRIBUTE, transform_node.GetAttribute(INTERPOLATION_ATTRIBUTE) or "linear")
    moving = transform_node.GetNodeReference(transform_node.GetMovingNodeReferenceRole())
    fixed = transform_node.GetNodeReference(transform_node.GetFixedNodeReferenceRole())
    set_registration_references(inverse, fixed, moving)
    return inverse


def warp_nodes(transform_node, nodes: Sequence, fixed_volume) -> List:
    """Copies of moving-space ``nodes`` warped into the fixed space, named "<name> warped".

    Args:
        transform_node: a VoxelOpt registration transform node.
        nodes: scalar volumes, segmentations, markups or models of the moving space, not under
            any transform (they are left unchanged).
        fixed_volume: the fixed volume; warped volumes are resampled onto its grid (linear).

    Returns:
        The new nodes, in the order of ``nodes``.

    Raises:
        InputNodeError: an unsupported node, or a node under a transform; no node is created then.
    """
    _grid_of(transform_node)
    for node in nodes:
        if not any(node.IsA(c) for c in WARPABLE_CLASSES):
            raise InputNodeError(f"'{node.GetName()}' is a {node.GetClassName()}; VoxelOpt warps {', '.join(WARPABLE_CLASSES)}")
        if node.GetParentTransformNode() is not None:
            raise InputNodeError(f"'{node.GetName()}' is under transform '{node.GetParentTransformNode().GetName()}'; harden or remove it first")
    return [_warp_one(transform_node, node, fixed_volume) for node in nodes]


def _resample(volume_node, transform_node, fixed_volume):
    """``volume_node`` resampled through the transform onto the fixed grid (a new node; nearest for label maps)."""
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())
    try:
        return slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(volume_node, fixed_volume)
    finally:
        volume_node.SetAndObserveTransformNodeID(None)


def _warp_one(transform_node, node, fixed_volume):
    scene = node.GetScene()
    name = scene.GenerateUniqueName(f"{node.GetName()} warped")
    if node.IsA("vtkMRMLScalarVolumeNode"):
        warped = _resample(node, transform_node, fixed_volume)
        warped.SetName(name)
        return warped
    if node.IsA("vtkMRMLSegmentationNode"):
        return _warp_segmentation(transform_node, node, fixed_volume, name)
    warped = scene.AddNewNodeByClass(node.GetClassName(), name)
    warped.Copy(node)
    warped.SetName(name)
    warped.RemoveAllDisplayNodeIDs()  # Copy shares the original's display nodes: give the copy its own
    warped.CreateDefaultDisplayNodes()
    warped.SetAndObserveTransformNodeID(transform_node.GetID())
    warped.HardenTransform()
    return warped


def _warp_segmentation(transform_node, segmentation_node, fixed_volume, name: str):
    scene = segmentation_node.GetScene()
    labels, names, colors = segment_labels(segmentation_node)
    with TemporaryNodes(scene):
        labelmap = add_volume_node_from_sitk(scene, labels, "labels (temporary)", "vtkMRMLLabelMapVolumeNode")
        warped_labels = sitk_from_volume_node(_resample(labelmap, transform_node, fixed_volume), "warped segmentation")
    warped = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    warped.CreateDefaultDisplayNodes()
    update_segmentation_from_labels(warped, warped_labels, names, colors, fixed_volume)
    return warped
