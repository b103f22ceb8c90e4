"""The VoxelOpt displacement field as a Slicer grid transform node.

Direction convention. The engine's field ``u`` (a SimpleITK vector image on the fixed grid, LPS
millimetres) follows ITK's resampling convention: ``warped(x) = moving(x + u(x))``. It maps points
of the *fixed* space to points of the *moving* space. In Slicer this is the transform's
**FromParent** side (the "resampling" transform, as Slicer loads ITK/Elastix/ANTs fields): put the
moving volume under the node and Slicer shows it warped into the fixed space; the ToParent side
(moving -> fixed, used to move models and markups) is computed on demand as the iterative inverse.

In RAS the same field is ``F u`` with ``F = diag(-1, -1, 1)``, sampled on the fixed grid's RAS
geometry (see :mod:`.volumes`).
"""

from typing import Optional

import numpy as np
import SimpleITK as sitk
import vtk
from vtkmodules.util import numpy_support

import slicer
import slicer.util

from .errors import InputNodeError
from .volumes import LPS_TO_RAS, sitk_geometry_ras, vtk_matrix

#: Node attribute storing the grid interpolation ("linear" or "cubic"): the ITK file formats do not
#: keep it and Slicer reads displacement fields back as cubic, which moves points by ~0.1 mm.
INTERPOLATION_ATTRIBUTE = "VoxelOpt.Interpolation"


def grid_transform_from_field(field: sitk.Image, interpolation: str = "linear"):
    """A ``vtkOrientedGridTransform`` in the resampling (FromParent) direction from an ITK field.

    Args:
        field: 3-component float vector image, displacement in LPS mm on its own grid (LPS geometry).
        interpolation: "linear" (ITK's default, matches the engine's warp) or "cubic".

    Returns:
        The VTK transform; set it with ``SetAndObserveTransformFromParent``.
    """
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            f"a 3-D field with 3 components per voxel is needed, got {field.GetDimension()}-D with "
            f"{field.GetNumberOfComponentsPerPixel()} component(s)"
        )
    origin, spacing, direction = sitk_geometry_ras(field)
    from voxelopt import voxels

    u_lps = voxels.view(field).astype(np.float32)  # (K, J, I, 3), components x, y, z (LPS)
    if not np.all(np.isfinite(u_lps)):
        raise ValueError("the displacement field contains NaN or infinite values")
    u_ras = u_lps * LPS_TO_RAS.diagonal().astype(np.float32)  # LPS -> RAS flips x and y
    K, J, I = u_ras.shape[:3]
    grid = vtk.vtkImageData()
    grid.SetDimensions(I, J, K)
    grid.SetSpacing(*[float(s) for s in spacing])
    grid.SetOrigin(*[float(v) for v in origin])
    vectors = numpy_support.numpy_to_vtk(np.ascontiguousarray(u_ras).reshape(-1, 3), deep=True, array_type=vtk.VTK_FLOAT)
    vectors.SetNumberOfComponents(3)
    grid.GetPointData().SetScalars(vectors)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(vtk_matrix(direction))
    if interpolation == "cubic":
        transform.SetInterpolationModeToCubic()
    elif interpolation == "linear":
        transform.SetInterpolationModeToLinear()
    else:
        raise ValueError(f"interpolation must be 'linear' or 'cubic', got {interpolation!r}")
    return transform


def set_field_on_transform_node(
    transform_node,
    field: sitk.Image,
    moving_node=None,
    fixed_node=None,
) -> None:
    """Store ``field`` in a ``vtkMRMLGridTransformNode`` as its FromParent (resampling) transform.

    Also records the registration's moving and fixed volumes with the standard node reference roles
    (``vtkMRMLTransformNode.GetMovingNodeReferenceRole()`` / ``GetFixedNodeReferenceRole()``), as
    Slicer's registration modules do.
    """
    transform_node.SetAndObserveTransformFromParent(grid_transform_from_field(field, "linear"))
    transform_node.SetAttribute(INTERPOLATION_ATTRIBUTE, "linear")
    set_registration_references(transform_node, moving_node, fixed_node)


def sitk_transform_from_linear_node(transform_node) -> sitk.AffineTransform:
    """The FromParent side of a linear transform node as an ITK affine transform (LPS millimetres).

    FromParent maps points of the parent (fixed) space to the node's child (moving) space: the
    direction ``voxelopt.register(initial_transform=...)`` and ``sitk.Resample`` use. In LPS the
    4x4 RAS matrix M becomes ``F M F`` with ``F = diag(-1, -1, 1, 1)``. Only the node's own
    matrix is read (the caller refuses a node under another transform).

    Raises:
        InputNodeError: the node holds a non-linear (grid, B-spline, thin-plate) transform.
    """
    if not transform_node.IsLinear():
        raise InputNodeError(
            f"initial transform '{transform_node.GetName()}' is not linear; VoxelOpt starts from a linear "
            "(rigid or affine) transform only: choose a linear transform node"
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformFromParent(matrix)
    flip = np.diag([*LPS_TO_RAS.diagonal(), 1.0])
    lps = flip @ slicer.util.arrayFromVTKMatrix(matrix) @ flip
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return transform


def restore_interpolation(scene) -> int:
    """Give every grid transform node with :data:`INTERPOLATION_ATTRIBUTE` its stored interpolation.

    Called after a scene is loaded (see :func:`observe_scene_loading`). Returns the nodes updated.
    """
    count = 0
    nodes = scene.GetNodesByClass("vtkMRMLTransformNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        mode = node.GetAttribute(INTERPOLATION_ATTRIBUTE)
        if mode not in ("linear", "cubic"):
            continue
        grids = [t for t in (node.GetTransformFromParent(), node.GetTransformToParent()) if isinstance(t, slicer.vtkOrientedGridTransform)]
        for transform in grids:
            if mode == "linear":
                transform.SetInterpolationModeToLinear()
            else:
                transform.SetInterpolationModeToCubic()
        count += bool(grids)
    return count


def observe_scene_loading(scene) -> int:
    """Run :func:`restore_interpolation` whenever a scene is loaded or imported into ``scene``.

    Returns the VTK observer tag (``scene.RemoveObserver(tag)`` stops it).
    """
    return scene.AddObserver(scene.EndImportEvent, lambda caller, event: restore_interpolation(caller))


def set_registration_references(transform_node, moving_node=None, fixed_node=None) -> None:
    """Point the transform's moving/fixed node references at the given volume nodes (None clears)."""
    transform_node.SetNodeReferenceID(
        transform_node.GetMovingNodeReferenceRole(), moving_node.GetID() if moving_node is not None else None
    )
    transform_node.SetNodeReferenceID(
        transform_node.GetFixedNodeReferenceRole(), fixed_node.GetID() if fixed_node is not None else None
    )


def displacement_ras_from_transform_node(transform_node) -> Optional[np.ndarray]:
    """The (K, J, I, 3) RAS-mm displacement grid stored in a grid transform node (either direction).

    Returns None when the node holds no grid transform.
    """
    transform = transform_node.GetTransformFromParent()
    if transform is None:
        return None
    transform.Update()
    if not isinstance(transform, slicer.vtkOrientedGridTransform):
        inverse = transform_node.GetTransformToParent()
        transform = inverse if isinstance(inverse, slicer.vtkOrientedGridTransform) else None
    if transform is None:
        return None
    grid = transform.GetDisplacementGrid()
    if grid is None:
        return None
    I, J, K = grid.GetDimensions()
    return numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).reshape(K, J, I, 3).copy()
