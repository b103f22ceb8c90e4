"""Small synthetic CT-like volume pairs built in code (for the self-test, the tests and demos).

The phantom is defined in physical millimetres around the volume centre: a soft-tissue body
(40 HU) in air (-1000 HU) with a "liver" (60 HU), two "kidneys" (150 HU) and a "spine" (400 HU),
with smooth (sigmoid) edges. The moving image is the same phantom displaced by a smooth known
deformation, so a registration has something to recover. Nothing is downloaded.

Geometry: by default the volumes are *oblique* (rotated 20 degrees), *anisotropic* and stored with
LPS-like axis directions (i and j pointing left and posterior, as a DICOM-loaded volume), which is
the hardest case for RAS <-> LPS conversions.
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: Organs of the phantom: name -> (label value, centre mm (x, y, z) in the volume frame,
#: semi-axes mm, HU, RGB colour).
ORGANS = {
    "liver": (1, (-14.0, 4.0, 2.0), (16.0, 13.0, 14.0), 60.0, (0.86, 0.45, 0.35)),
    "right kidney": (2, (-16.0, -14.0, -8.0), (6.0, 6.0, 9.0), 150.0, (0.73, 0.31, 0.22)),
    "left kidney": (3, (16.0, -14.0, -6.0), (6.0, 6.0, 9.0), 150.0, (0.81, 0.36, 0.26)),
    "spine": (4, (0.0, -22.0, 0.0), (5.0, 5.0, 40.0), 400.0, (0.95, 0.93, 0.85)),
}


def rotation(angle_deg: float) -> np.ndarray:
    """A rotation of ``angle_deg`` about the z axis followed by ``angle_deg / 2`` about the x axis."""
    a = np.deg2rad(angle_deg)
    b = np.deg2rad(angle_deg / 2.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def ras_geometry(
    shape_kji: Sequence[int],
    spacing: Sequence[float],
    oblique_deg: float = 20.0,
    lps_stored: bool = True,
    center_ras: Sequence[float] = (5.0, -12.0, 30.0),
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, spacing, direction) in RAS for a volume of ``shape_kji`` centred on ``center_ras``.

    ``lps_stored`` makes the i and j axes point left and posterior (direction columns -x, -y), as
    in volumes read from DICOM or ITK files.
    """
    direction = rotation(oblique_deg)
    if lps_stored:
        direction = direction @ np.diag([-1.0, -1.0, 1.0])
    spacing = np.asarray(spacing, float)
    extent = (np.array(shape_kji[::-1], float) - 1.0) * spacing  # i, j, k order
    origin = np.asarray(center_ras, float) - direction @ (extent / 2.0)
    return origin, spacing, direction


def _frame_coordinates(shape_kji: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """(K, J, I, 3) millimetre coordinates (x along i, y along j, z along k) relative to the centre."""
    K, J, I = shape_kji
    sp = np.asarray(spacing, float)
    k, j, i = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    coords = np.stack([(i - (I - 1) / 2.0) * sp[0], (j - (J - 1) / 2.0) * sp[1], (k - (K - 1) / 2.0) * sp[2]], axis=-1)
    return coords


def _soft_inside(coords: np.ndarray, centre, semi_axes, edge_mm: float = 1.5) -> np.ndarray:
    """Smooth indicator (0..1) of an ellipsoid, with a sigmoid edge about ``edge_mm`` wide."""
    d = np.sqrt((((coords - np.asarray(centre)) / np.asarray(semi_axes)) ** 2).sum(-1))
    scale = float(np.mean(semi_axes))
    return 1.0 / (1.0 + np.exp((d - 1.0) * scale / edge_mm))


def phantom(coords: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(HU float32, labels uint8) of the phantom at millimetre coordinates ``coords`` (..., 3)."""
    body = _soft_inside(coords, (0.0, -2.0, 0.0), (34.0, 28.0, 80.0))
    hu = -1000.0 + 1040.0 * body
    labels = np.zeros(coords.shape[:-1], np.uint8)
    for value, centre, axes, organ_hu, _ in ORGANS.values():
        inside = _soft_inside(coords, centre, axes)
        hu = hu + (organ_hu - 40.0) * inside * body
        labels[inside > 0.5] = value
    return hu.astype(np.float32), labels


def deformation(coords: np.ndarray, amplitude_mm: float = 4.0) -> np.ndarray:
    """A smooth displacement (mm, same frame as ``coords``) used to make the moving image."""
    x, y, z = coords[..., 0], coords[..., 1], coords[..., 2]
    d = np.stack(
        [
            amplitude_mm * np.sin(y / 25.0) * np.cos(z / 40.0),
            0.75 * amplitude_mm * np.cos(x / 30.0),
            0.5 * amplitude_mm * np.sin(x / 35.0 + y / 35.0),
        ],
        axis=-1,
    )
    return d


def phantom_pair(
    shape_kji: Sequence[int] = (40, 48, 48), spacing: Sequence[float] = (1.6, 1.5, 2.0), amplitude_mm: float = 4.0
) -> Dict[str, np.ndarray]:
    """Arrays (K, J, I) of a fixed/moving phantom pair: keys fixed, moving, fixed_labels, moving_labels.

    ``moving(x) = phantom(x - d(x))``, so the moving organs are displaced by about ``d``.
    """
    coords = _frame_coordinates(shape_kji, spacing)
    fixed, fixed_labels = phantom(coords)
    moving, moving_labels = phantom(coords - deformation(coords, amplitude_mm))
    return {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels}


def add_phantom_volumes(
    scene,
    shape_kji: Sequence[int] = (40, 48, 48),
    spacing: Sequence[float] = (1.6, 1.5, 2.0),
    oblique_deg: float = 20.0,
    lps_stored: bool = True,
    with_segmentations: bool = False,
    amplitude_mm: float = 4.0,
    moving_geometry: Optional[Tuple[Sequence[int], Sequence[float], float]] = None,
) -> Dict[str, object]:
    """Add a phantom pair to ``scene`` as volume nodes "fixed" and "moving" (plus segmentations).

    Both volumes share the same oblique, anisotropic geometry unless ``moving_geometry`` =
    (shape_kji, spacing, oblique_deg) gives the moving volume its own grid (the phantom is then
    evaluated on that grid, in the same physical frame).

    Returns a dict with keys "fixed", "moving" (vtkMRMLScalarVolumeNode) and, with
    ``with_segmentations``, "fixed_segmentation", "moving_segmentation" (vtkMRMLSegmentationNode,
    segments named after :data:`ORGANS`).
    """
    from . import segmentations, volumes

    pair = phantom_pair(shape_kji, spacing, amplitude_mm)
    origin, sp, direction = ras_geometry(shape_kji, spacing, oblique_deg, lps_stored)
    nodes: Dict[str, object] = {}
    fixed = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed")
    volumes.set_volume_array(fixed, pair["fixed"], origin, sp, direction)
    nodes["fixed"] = fixed
    moving_arrays = pair
    m_origin, m_sp, m_dir = origin, sp, direction
    if moving_geometry is not None:
        m_shape, m_spacing, m_oblique = moving_geometry
        m_origin, m_sp, m_dir = ras_geometry(m_shape, m_spacing, m_oblique, lps_stored)
        # Phantom frame = the fixed volume's frame: express the moving voxel centres in it.
        K, J, I = m_shape
        k, j, i = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
        ras = (np.stack([i, j, k], -1) * m_sp) @ m_dir.T + m_origin
        centre = origin + direction @ ((np.array(shape_kji[::-1], float) - 1.0) * sp / 2.0)
        coords = (ras - centre) @ direction
        m_hu, m_labels = phantom(coords - deformation(coords, amplitude_mm))
        moving_arrays = {"moving": m_hu, "moving_labels": m_labels}
    moving = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving")
    volumes.set_volume_array(moving, moving_arrays["moving"], m_origin, m_sp, m_dir)
    nodes["moving"] = moving
    for node in (fixed, moving):
        node.CreateDefaultDisplayNodes()
    if with_segmentations:
        names = {value: name for name, (value, _, _, _, _) in ORGANS.items()}
        colors = {value: color for _, (value, _, _, _, color) in ORGANS.items()}
        nodes["fixed_segmentation"] = segmentations.add_segmentation_from_array(
            scene, "fixed segmentation", pair["fixed_labels"], fixed, names, colors
        )
        nodes["moving_segmentation"] = segmentations.add_segmentation_from_array(
            scene, "moving segmentation", moving_arrays["moving_labels"], moving, names, colors
        )
    return nodes
