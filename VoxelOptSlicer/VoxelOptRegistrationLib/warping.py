"""Using a registration's transform on other nodes: the inverse transform and one-click warping.

The registration transform node stores the field in its **FromParent** (resampling) side: fixed
points -> moving points (see :mod:`.transforms`). Slicer derives the **ToParent** side (moving
points -> fixed points, iterative inverse) from it, and that is what moves models, markups and
segmentations placed under the node. So:

* :func:`warp_nodes` copies nodes of the *moving* space (volumes, segmentations, markups, models)
  into the *fixed* space: volumes and segmentations (as label maps, nearest neighbour) are
  resampled onto the fixed grid through the FromParent field, like the engine's warped outputs
  (outside the moving volume: its minimum, 0 for labels); markups and models are hardened
  through the ToParent side. The copies are new nodes with no storage node of their own yet
  (saving the scene gives them one): they never write over the original's file.
* :func:`create_inverse_transform` makes the opposite transform node (FromParent: moving -> fixed),
  which shows the fixed volume, or moves fixed-space markups, in the moving space.
"""

from typing import List, Sequence

import vtk
from vtkmodules.util import numpy_support

import slicer

from .errors import InputNodeError
from .segmentations import overlap_free_groups, segment_labels, update_segmentation_from_labels
from .transaction import remove_node
from .transforms import INTERPOLATION_ATTRIBUTE, set_registration_references
from .volumes import ROLE_ATTRIBUTE, parent_transform_check, sitk_ijk_to_ras_matrix, sitk_on_node_grid, vtk_matrix

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
        nodes: scalar volumes, segmentations, markups or models of the moving space (they are left
            unchanged). Their data is warped as stored: a node under a VoxelOpt registration
            transform (e.g. the moving volume, shown warped live after Apply) is warped from its
            own voxels or points, not through that transform; any other parent transform is refused.
        fixed_volume: the fixed volume; warped volumes are resampled onto its grid (linear).

    Returns:
        The new nodes, in the order of ``nodes``, under no transform (they are in the fixed space
        already); none has a storage node (see the module doc). Overlapping segments of a
        segmentation stay overlapping segments of its copy.

    Raises:
        InputNodeError: an unsupported node, a node under another transform (see
            :func:`.volumes.parent_transform_check`) or a segmentation without segments; no node
            is created then, and a failure while warping removes the copies already made.
    """
    _grid_of(transform_node)
    for node in nodes:
        if not any(node.IsA(c) for c in WARPABLE_CLASSES):
            raise InputNodeError(f"'{node.GetName()}' is a {node.GetClassName()}; VoxelOpt warps {', '.join(WARPABLE_CLASSES)}")
        parent_transform_check(node)
        if node.IsA("vtkMRMLSegmentationNode") and node.GetSegmentation().GetNumberOfSegments() == 0:
            raise InputNodeError(f"segmentation '{node.GetName()}' has no segments: there is nothing to warp")
    made: List = []  # every node added so far, removed again if a later one fails
    try:
        return [_warp_one(transform_node, node, fixed_volume, made) for node in nodes]
    except BaseException:
        for copy in reversed(made):
            remove_node(copy.GetScene(), copy)
        raise


def _reslice(image, moving_ras_to_ijk, transform_node, fixed_volume, labels: bool):
    """``image`` (vtkImageData on the moving grid whose RAS -> IJK matrix is ``moving_ras_to_ijk``)
    resampled onto the fixed volume's voxels through the registration's field (FromParent: fixed
    -> moving points), as the engine warps: trilinear with the image's minimum outside it (air for
    CT), or for labels nearest neighbour with 0 outside. Returns the new vtkImageData (IJK of the
    fixed grid: origin 0, spacing 1)."""
    fixed_ijk_to_ras = vtk.vtkMatrix4x4()
    fixed_volume.GetIJKToRASMatrix(fixed_ijk_to_ras)
    fixed_to_moving_ijk = vtk.vtkGeneralTransform()
    fixed_to_moving_ijk.PostMultiply()  # applied in the order concatenated
    fixed_to_moving_ijk.Concatenate(fixed_ijk_to_ras)
    fixed_to_moving_ijk.Concatenate(transform_node.GetTransformFromParent())  # fixed -> moving points
    fixed_to_moving_ijk.Concatenate(moving_ras_to_ijk)
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(image)
    reslice.SetResliceTransform(fixed_to_moving_ijk)
    reslice.SetOutputOrigin(0, 0, 0)
    reslice.SetOutputSpacing(1, 1, 1)
    i, j, k = fixed_volume.GetImageData().GetDimensions()
    reslice.SetOutputExtent(0, i - 1, 0, j - 1, 0, k - 1)
    if labels:
        reslice.SetInterpolationModeToNearestNeighbor()
    else:
        reslice.SetInterpolationModeToLinear()
    reslice.SetBackgroundLevel(0.0 if labels else image.GetScalarRange()[0])
    reslice.Update()
    return reslice.GetOutput()


def _resample(volume_node, transform_node, fixed_volume, name: str, made: List):
    """A new volume node (of ``volume_node``'s class) holding ``volume_node``'s stored voxels (its
    parent transform is not applied) resampled onto the fixed grid (:func:`_reslice`; label maps
    nearest neighbour), under no transform, appended to ``made``. The node is made as by Slicer's
    ``ResampleVolumeToReferenceVolume``, which fills with 0 and would apply the parent transform."""
    moving_ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(moving_ras_to_ijk)
    image = _reslice(volume_node.GetImageData(), moving_ras_to_ijk, transform_node, fixed_volume,
                     volume_node.IsA("vtkMRMLLabelMapVolumeNode"))
    # a copy of the node with a copy of its display node (window, colours), no storage node, no voxels
    warped = slicer.vtkSlicerVolumesLogic.CloneVolumeWithoutImageData(volume_node.GetScene(), volume_node, name)
    made.append(warped)
    warped.SetAndObserveTransformNodeID(None)  # the clone keeps the original's parent: the copy is warped already
    warped.CopyOrientation(fixed_volume)
    warped.SetAndObserveImageData(image)
    return warped


def _warp_one(transform_node, node, fixed_volume, made: List):
    """The warped copy of one node (see :func:`warp_nodes`); each node added is appended to ``made``."""
    scene = node.GetScene()
    name = scene.GenerateUniqueName(f"{node.GetName()} warped")
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return _resample(node, transform_node, fixed_volume, name, made)
    if node.IsA("vtkMRMLSegmentationNode"):
        return _warp_segmentation(transform_node, node, fixed_volume, name, made)
    warped = scene.AddNewNodeByClass(node.GetClassName(), name)
    made.append(warped)
    warped.Copy(node)
    warped.SetName(name)
    warped.RemoveAllDisplayNodeIDs()  # Copy shares the original's display nodes: give the copy its own
    warped.CreateDefaultDisplayNodes()
    warped.SetAndObserveStorageNodeID(None)  # and its storage node: saving would write the copy into the original's file
    warped.SetAndObserveTransformNodeID(transform_node.GetID())
    warped.HardenTransform()
    return warped


def _warp_segmentation(transform_node, segmentation_node, fixed_volume, name: str, made: List):
    """A new segmentation of the segments resampled onto the fixed grid (nearest neighbour), one
    label map per group of segments that do not overlap (:func:`.segmentations.overlap_free_groups`),
    so that overlapping segments keep all their voxels."""
    scene = segmentation_node.GetScene()
    parent_id = segmentation_node.GetTransformNodeID()
    segmentation_node.SetAndObserveTransformNodeID(None)  # exported as stored, not through its (VoxelOpt) parent
    try:
        groups = [segment_labels(segmentation_node, ids) for ids in overlap_free_groups(segmentation_node)]
    finally:
        segmentation_node.SetAndObserveTransformNodeID(parent_id)
    warped = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    made.append(warped)
    warped.CreateDefaultDisplayNodes()
    for index, (labels, names, colors) in enumerate(groups):
        update_segmentation_from_labels(warped, _warped_labels(labels, transform_node, fixed_volume), names, colors,
                                        fixed_volume, replace=index == 0)
    return warped


def _warped_labels(labels, transform_node, fixed_volume):
    """A label map (SimpleITK, its own grid) resampled onto the fixed volume's grid through the
    field: the label map as vtkImageData, without temporary nodes (a label map node's display node
    wants the scene's "Labels" colour table, which a bare scene does not have)."""
    from voxelopt import voxels

    label_image = vtk.vtkImageData()
    label_image.SetDimensions(labels.GetSize())
    label_image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(voxels.view(labels).ravel(), deep=True))
    labels_ras_to_ijk = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(vtk_matrix(sitk_ijk_to_ras_matrix(labels)), labels_ras_to_ijk)
    resliced = _reslice(label_image, labels_ras_to_ijk, transform_node, fixed_volume, labels=True)
    i, j, k = resliced.GetDimensions()
    warped_array = numpy_support.vtk_to_numpy(resliced.GetPointData().GetScalars()).reshape(k, j, i)
    return sitk_on_node_grid(warped_array, fixed_volume, "warped segmentation")
