"""Conversion between MRML volume nodes (RAS) and SimpleITK images (LPS), with input validation.

Conventions:

* Slicer stores a volume's geometry as an IJK -> RAS matrix, millimetres (RAS: x points to the
  patient's *Right*, y *Anterior*, z *Superior*).
* SimpleITK/ITK images (and so the ``voxelopt`` engine) use LPS physical space, millimetres:
  x points *Left*, y *Posterior*, z *Superior*.
* The two are related by ``p_LPS = F p_RAS`` with ``F = diag(-1, -1, 1)``; so an image's origin is
  ``F o_RAS`` and its direction matrix (columns = the i, j, k axis directions) is ``F D_RAS``.
* Voxel arrays are (k, j, i) in both ``slicer.util.arrayFromVolume`` and
  ``SimpleITK.GetArrayFromImage``, so the array itself is never reordered.

Only APIs of the ``slicer-core`` PyPI package are used, so this module runs (and is tested)
headless as well as inside Slicer.
"""

from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util import numpy_support

from .errors import InputNodeError

#: LPS <-> RAS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Node attribute naming the role of a node produced by VoxelOpt ("transform", "warped", ...).
ROLE_ATTRIBUTE = "VoxelOpt.Role"


def node_geometry_ras(node) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin (3,), spacing (3,), direction (3, 3)) of a volume node, in RAS millimetres.

    The direction's columns are the unit vectors of the i, j, k voxel axes.
    """
    direction = np.zeros((3, 3))
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    for r in range(3):
        for c in range(3):
            direction[r, c] = m.GetElement(r, c)
    return np.array(node.GetOrigin(), float), np.array(node.GetSpacing(), float), direction


def ijk_to_ras_matrix(node) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix of a volume node as a numpy array."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _node_label(node) -> str:
    if node is None:
        return "volume"
    return f"{'volume' if node.IsA('vtkMRMLVolumeNode') else 'node'} '{node.GetName()}'"


def parent_transform_check(node, ignore_roles: Iterable[str] = ("transform",), role: str = "") -> None:
    """Raise :class:`InputNodeError` when ``node`` sits under a transform VoxelOpt would ignore.

    VoxelOpt reads a node's data as stored (a volume's own voxels and geometry), never through its
    parent transform. A transform made by a VoxelOpt run (attribute ``VoxelOpt.Role`` in
    ``ignore_roles``, e.g. the live warp of a previous run's moving volume) is ignored, unless it
    sits under a transform itself (that one would be ignored silently). Any other parent is
    refused; the message for a parent that is a VoxelOpt output says to take the node out of it,
    never to harden it: hardening would resample the node through a previous result and bias
    the next registration. ``role`` (e.g. "moving segmentation") names the node in the message.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return
    label = f"{role} '{node.GetName()}'" if role else _node_label(node)
    voxelopt_role = parent.GetAttribute(ROLE_ATTRIBUTE)
    if voxelopt_role in tuple(ignore_roles):
        above = parent.GetParentTransformNode()
        if above is None:
            return
        raise InputNodeError(
            f"{label} is under VoxelOpt transform '{parent.GetName()}', which is under transform "
            f"'{above.GetName()}'. VoxelOpt reads the {_data_word(node)} as stored, so '{above.GetName()}' would be "
            f"ignored: take '{parent.GetName()}' out of '{above.GetName()}' (Data module: drag it to the scene's "
            "top level), then run again."
        )
    if voxelopt_role is not None:
        raise InputNodeError(
            f"{label} is under '{parent.GetName()}', a transform made by VoxelOpt. VoxelOpt reads the "
            f"{_data_word(node)} as stored: take it out of that transform (Data module: drag it to the scene's top "
            "level), then run again. Do not harden the transform: that would resample it through the previous "
            "result and bias the registration."
        )
    raise InputNodeError(
        f"{label} is under transform '{parent.GetName()}'. VoxelOpt reads the {_data_word(node)} as stored, "
        "without the transform: harden the transform (Data module: right-click > Harden transform) or "
        "remove it, then run again."
    )


def _data_word(node) -> str:
    """How a message names a node's data: "voxels" for volumes and segmentations, else "data"."""
    return "voxels" if node.IsA("vtkMRMLVolumeNode") or node.IsA("vtkMRMLSegmentationNode") else "data"


def validate_volume_node(node, role: str = "input", check_values: bool = True) -> None:
    """Check that ``node`` is a scalar 3-D volume node with voxels; raise :class:`InputNodeError` if not.

    Checks: a scalar volume node with image data, a single component, at least 2 voxels along
    every axis (3-D) and (``check_values``) no NaN or infinite voxel. The geometry (spacing,
    direction, origin) is checked by the engine's contract in :func:`sitk_from_volume_node`.
    """
    if node is None:
        raise InputNodeError(f"no {role} volume selected")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputNodeError(f"{role} node '{node.GetName()}' is a {node.GetClassName()}, not a scalar volume")
    label = f"{role} {_node_label(node)}"
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0 or image.GetPointData().GetScalars() is None:
        raise InputNodeError(f"{label} has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputNodeError(f"{label} has {image.GetNumberOfScalarComponents()} components per voxel; a scalar volume is needed")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputNodeError(f"{label} is not 3-D: its size is {dims[0]}x{dims[1]}x{dims[2]} voxels")
    if check_values:
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        if values.dtype.kind == "f":
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                raise InputNodeError(
                    f"{label} contains {bad} NaN or infinite voxel(s); replace them (e.g. with the "
                    "background value) before registering"
                )


def set_voxel_value_meaning(node, quantity: str, units_code: str, units: str) -> None:
    """Tag a scalar volume node's voxel values with the quantity they are and their unit (UCUM code
    ``units_code``, shown as ``units``): Slicer's data probe and DICOM export read them."""
    quantity_entry, units_entry = slicer.vtkCodedEntry(), slicer.vtkCodedEntry()
    quantity_entry.SetValueSchemeMeaning(quantity.replace(" ", "_"), "VoxelOpt", quantity)
    units_entry.SetValueSchemeMeaning(units_code, "UCUM", units)
    node.SetVoxelValueQuantity(quantity_entry)
    node.SetVoxelValueUnits(units_entry)


def array_from_volume_node(node) -> np.ndarray:
    """A copy of the voxels of a scalar volume node, shape (K, J, I) (numpy order k, j, i)."""
    return np.array(_voxel_view(node))


def _voxel_view(node) -> np.ndarray:
    """The voxels of a scalar volume node as a (K, J, I) view of its image data (valid while the
    node keeps that image data)."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def sitk_from_volume_node(node, role: str = "input", pixel_type: Optional[int] = None) -> sitk.Image:
    """A SimpleITK image (LPS) with the voxels and geometry of a volume node (RAS), validated.

    Args:
        node: a scalar (or label map) volume node. Its parent transform is *not* applied.
        role: how the node is named in error messages ("fixed", "moving", ...).
        pixel_type: optional SimpleITK pixel type to cast to (e.g. ``sitk.sitkFloat32``).

    Raises:
        InputNodeError: see :func:`validate_volume_node`, and a geometry that
            ``voxelopt.geometry.check_image`` refuses (spacing, direction, origin).
    """
    validate_volume_node(node, role)
    image = sitk_on_node_grid(_voxel_view(node), node, role)  # SimpleITK copies the voxels (once)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


class VolumeCopies:
    """The SimpleITK copy of each input volume node, handed out again while the node's voxels
    (compared with the copy, slab by slab) and geometry are unchanged: a re-run after a
    parameter change skips the copy (0.5 s of fresh memory per 512x512x600 CT) and, since the
    same image object comes back, the engine's content digest of it (see
    ``voxelopt.FeatureCache.mark_constant``). The comparison reads both arrays once (0.1 s for
    that CT). One entry per role ("fixed", "moving") bounds the memory it keeps."""

    #: Voxels compared at a time (a few MB: no large temporary).
    SLAB_VOXELS = 1 << 22

    def __init__(self) -> None:
        self._entries: Dict[str, Tuple[tuple, sitk.Image]] = {}

    def image(self, node, role: str) -> sitk.Image:
        """:func:`sitk_from_volume_node` of ``node``, from the kept copy when it still holds the node's voxels."""
        validate_volume_node(node, role, check_values=False)
        view = _voxel_view(node)
        key = (node.GetID(), view.shape, view.dtype.str, tuple(ijk_to_ras_matrix(node).ravel()))
        entry = self._entries.get(role)
        if entry is not None and entry[0] == key and self._same_voxels(view, entry[1]):
            return entry[1]  # equal voxels: the NaN check passed when the copy was made
        self._entries.pop(role, None)  # the old copy is freed before the new one is made
        image = sitk_from_volume_node(node, role)
        self._entries[role] = (key, image)
        return image

    @classmethod
    def _same_voxels(cls, view: np.ndarray, image: sitk.Image) -> bool:
        from voxelopt import voxels

        kept = voxels.view(image)
        if kept.shape != view.shape or kept.dtype != view.dtype:
            return False
        flat, kept = view.reshape(-1), kept.reshape(-1)
        for start in range(0, flat.size, cls.SLAB_VOXELS):
            stop = start + cls.SLAB_VOXELS
            if not np.array_equal(flat[start:stop], kept[start:stop]):
                return False
        return True


def sitk_on_node_grid(array: np.ndarray, node, role: str = "input") -> sitk.Image:
    """A SimpleITK image (LPS) of ``array`` (K, J, I) on a volume node's own voxel grid (its
    parent transform is not applied); geometry checked as in :func:`sitk_from_volume_node`."""
    origin, spacing, direction = node_geometry_ras(node)
    label = f"{role} {_node_label(node)}"
    image = sitk.GetImageFromArray(array)
    try:
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ origin))
        image.SetDirection(tuple(float(v) for v in (LPS_TO_RAS @ direction).ravel()))
    except RuntimeError:  # ITK refuses a zero spacing or a singular direction outright
        raise InputNodeError(
            f"{label} has bad geometry: spacing {tuple(spacing)} mm and IJK->RAS direction columns "
            f"{np.round(direction, 4).T.tolist()} must be > 0 and orthonormal; fix the volume's geometry (Volumes module) first"
        ) from None
    _check_geometry(image, label)
    return image


def _check_geometry(image: sitk.Image, label: str) -> None:
    """The engine's geometry check (``voxelopt.geometry.check_image``) as an :class:`InputNodeError`."""
    import voxelopt.geometry

    try:
        voxelopt.geometry.check_image(image, label)
    except voxelopt.InputError as error:
        raise InputNodeError(f"{error}: bad geometry; fix the volume's geometry (Volumes module) first") from None


def sitk_geometry_ras(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) of a SimpleITK image converted to RAS (see module docstring)."""
    if image.GetDimension() != 3:
        raise ValueError(f"a 3-D image is needed, got {image.GetDimension()}-D")
    direction_lps = np.array(image.GetDirection(), float).reshape(3, 3)
    origin_ras = LPS_TO_RAS @ np.array(image.GetOrigin(), float)
    return origin_ras, np.array(image.GetSpacing(), float), LPS_TO_RAS @ direction_lps


def sitk_ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix of a SimpleITK image (:func:`ijk_to_ras_matrix` of the node it would make)."""
    origin, spacing, direction = sitk_geometry_ras(image)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing
    matrix[:3, 3] = origin
    return matrix


def vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A vtkMatrix4x4 holding ``matrix`` (3x3, e.g. a direction, or 4x4) in its top-left block,
    the identity elsewhere."""
    matrix = np.asarray(matrix)
    result = vtk.vtkMatrix4x4()
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def set_node_geometry(node, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray) -> None:
    """Set a volume node's RAS origin, spacing (mm) and direction (columns = i, j, k axes)."""
    node.SetOrigin(*[float(v) for v in origin])
    node.SetSpacing(*[float(v) for v in spacing])
    node.SetIJKToRASDirectionMatrix(vtk_matrix(direction))


def update_volume_node_from_sitk(node, image: sitk.Image, share: bool = False) -> None:
    """Replace the voxels and geometry of ``node`` by those of a scalar SimpleITK image (LPS -> RAS).

    The voxels are copied into VTK, unless ``share``: then the node's voxels are the image's own
    buffer, which VTK keeps alive (no copy: 0.5 s less at 512x512x600 int16). Share only an image
    made for this node and not used afterwards (an engine output): what Slicer writes into the
    node (an edit) it writes into the image.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("only scalar images can be stored in a scalar volume node")
    origin, spacing, direction = sitk_geometry_ras(image)
    if share:
        from voxelopt.io import writable_array

        set_volume_array(node, writable_array(image), origin, spacing, direction, owner=image)
        return
    # a view: set_volume_array copies the voxels into VTK once (a copy here cost 0.3 s more at 512x512x600)
    from voxelopt import voxels

    set_volume_array(node, voxels.view(image), origin, spacing, direction)


def add_volume_node_from_sitk(scene, image: sitk.Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in ``scene`` holding a SimpleITK image, with default display nodes."""
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_sitk(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def same_geometry(node_a, node_b, atol: float = 1e-4) -> bool:
    """True when two volume nodes have the same dimensions and IJK -> RAS matrix (within ``atol`` mm)."""
    dims_a = node_a.GetImageData().GetDimensions()
    dims_b = node_b.GetImageData().GetDimensions()
    return tuple(dims_a) == tuple(dims_b) and np.allclose(ijk_to_ras_matrix(node_a), ijk_to_ras_matrix(node_b), atol=atol)


def node_on_image_grid(node, image: sitk.Image, atol: float = 1e-4) -> bool:
    """True when a volume node's voxel grid is that of a SimpleITK image (the same dimensions and
    IJK -> RAS matrix within ``atol`` mm), e.g. the copy the engine registered."""
    data = node.GetImageData()
    return (data is not None and tuple(data.GetDimensions()) == tuple(image.GetSize())
            and np.allclose(ijk_to_ras_matrix(node), sitk_ijk_to_ras_matrix(image), atol=atol))


def set_volume_array(node, array: np.ndarray, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray,
                     owner: Optional[object] = None) -> None:
    """Set a volume node's voxels from a (K, J, I) array and its RAS geometry (see
    :func:`set_node_geometry`). The voxels are copied (a read-only view will do), unless
    ``owner`` is given: then VTK uses the array's memory (a writable, C-contiguous array) and keeps
    ``owner`` (what the memory belongs to, e.g. a SimpleITK image) alive as long as it does."""
    if owner is None:
        array = np.ascontiguousarray(array)
    elif not (array.flags.c_contiguous and array.flags.writeable):
        raise ValueError("a shared array must be C-contiguous and writable")
    if array.ndim != 3:
        raise ValueError(f"a (K, J, I) array is needed, got shape {array.shape}")
    vtk_image = vtk.vtkImageData()
    vtk_image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=owner is None)
    if owner is not None:  # VTK keeps a wrapped object's Python attributes while the object lives
        scalars._voxelopt_memory_owner = owner
    scalars.SetName("ImageScalars")
    vtk_image.GetPointData().SetScalars(scalars)
    was_modifying = node.StartModify()
    set_node_geometry(node, origin, spacing, direction)
    node.SetAndObserveImageData(vtk_image)
    node.EndModify(was_modifying)


class TemporaryNodes:
    """Context manager removing every node added to ``scene`` inside the block (temporary label
    maps and the display, colour-table and subject-hierarchy nodes Slicer adds with them), so that
    helper conversions leave no trace in the scene."""

    def __init__(self, scene, keep: Iterable[object] = ()) -> None:
        self.scene = scene
        self.keep_ids = set()
        self._keep = list(keep)

    def _ids(self) -> List[str]:
        return [self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())]

    def keep(self, node) -> None:
        """Do not remove ``node`` (created inside the block) on exit."""
        self.keep_ids.add(node.GetID())

    def __enter__(self) -> "TemporaryNodes":
        self.before = set(self._ids())
        return self

    def __exit__(self, *exc_info) -> None:
        for node in self._keep:
            self.keep_ids.add(node.GetID())
        for node_id in reversed(self._ids()):
            if node_id in self.before or node_id in self.keep_ids:
                continue
            node = self.scene.GetNodeByID(node_id)
            if node is not None:
                self.scene.RemoveNode(node)
