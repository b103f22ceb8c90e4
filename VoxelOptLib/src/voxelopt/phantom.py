"""A synthetic abdominal CT phantom and pairs with a known deformation (demo and tests).

The phantom is defined in physical millimetres (so any spacing works): an elliptic body of fat
and muscle, a vertebra, aorta, liver, spleen, kidneys, stomach and gallbladder as ellipsoids with
CT-like HU values, smooth texture and noise. Labels follow the Learn2Reg abdominal ids where
they exist: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, 7 stomach, 8 aorta,
14 vertebra.

:func:`phantom_pair` makes a pair with a *known answer*: the fixed image is the moving image
warped by a smooth random field d (mm), so ``fixed(x) = moving(x + d(x))`` and d is exactly
the field a registration should find.

numpy, SciPy and SimpleITK only (no torch): the Slicer module's self-test builds its volumes with
it before torch is known to be installed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# label: (centre (x, y, z) mm, semi-axes (x, y, z) mm, HU); LPS: +x = patient left, +y = posterior
_ORGANS = {
    6: ((-55.0, -5.0, 25.0), (60.0, 50.0, 45.0), 60.0),  # liver (patient right)
    1: ((70.0, 25.0, 30.0), (25.0, 30.0, 35.0), 50.0),  # spleen
    2: ((-50.0, 40.0, -25.0), (18.0, 20.0, 35.0), 150.0),  # right kidney
    3: ((50.0, 40.0, -20.0), (18.0, 20.0, 35.0), 150.0),  # left kidney
    7: ((35.0, -30.0, 35.0), (35.0, 25.0, 30.0), 25.0),  # stomach
    4: ((-40.0, -45.0, 0.0), (12.0, 12.0, 18.0), 5.0),  # gallbladder
    8: ((0.0, 20.0, 0.0), (10.0, 10.0, 200.0), 180.0),  # aorta
    14: ((0.0, 55.0, 0.0), (20.0, 18.0, 200.0), 600.0),  # vertebra
}
_DRAW_ORDER = (14, 6, 1, 2, 3, 7, 4, 8)
#: Organ name of each label id (Learn2Reg abdominal CT names).
LABEL_NAMES = {1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 6: "liver", 7: "stomach",
               8: "aorta", 14: "vertebra"}


def phantom(size: Sequence[int] = (96, 80, 64), spacing: Sequence[float] = (3.0, 3.0, 3.0),
            direction: Optional[Sequence[float]] = None, seed: int = 0, noise_hu: float = 10.0) -> Tuple[sitk.Image, sitk.Image]:
    """An abdominal CT phantom centred on the origin.

    Args:
        size: voxels along (x, y, z).
        spacing: mm along (x, y, z).
        direction: 3x3 row-major direction cosines (default identity, LPS).
        seed: texture and noise seed.
        noise_hu: standard deviation of the white noise.

    Returns:
        (image in HU as float32, labels as uint8) with the same geometry.
    """
    reference = _centred_reference(size, spacing, direction)
    x, y, z = _physical_points(reference)
    rng = np.random.default_rng(seed)

    body = (x / 160.0) ** 2 + (y / 125.0) ** 2 <= 1.0
    fat_inner = (x / 145.0) ** 2 + (y / 110.0) ** 2 <= 1.0
    image = np.where(body, -100.0, -1000.0)
    image[fat_inner] = -30.0  # mixed fat and muscle inside the subcutaneous fat layer
    labels = np.zeros(image.shape, np.uint8)
    for label in _DRAW_ORDER:
        (cx, cy, cz), (rx, ry, rz), hu = _ORGANS[label]
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0
        image[inside] = hu
        labels[inside] = label
    # Vertebral bodies separated by discs, and small blobs of gas and fat in the soft tissue,
    # give structure along z (long organs alone leave z motion undetermined).
    vertebra = labels == 14
    disc = vertebra & (np.mod(z + 200.0, 30.0) < 6.0)
    image[disc] = 90.0
    for _ in range(40):
        centre = rng.uniform([-110.0, -90.0, -120.0], [110.0, 40.0, 120.0])
        radius = rng.uniform(5.0, 11.0)
        blob = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2) & fat_inner & (labels == 0)
        image[blob] = rng.choice([-700.0, -90.0])
    texture = _smooth_noise(rng, image.shape, 3)
    image = image + np.where(body, 25.0 * texture, 0.0) + rng.normal(0.0, noise_hu, image.shape)
    image_sitk = sitk.GetImageFromArray(image.astype(np.float32))
    labels_sitk = sitk.GetImageFromArray(labels)
    for out in (image_sitk, labels_sitk):
        out.CopyInformation(reference)
    return image_sitk, labels_sitk


def _centred_reference(size: Sequence[int], spacing: Sequence[float], direction: Optional[Sequence[float]]) -> sitk.Image:
    """An empty image of ``size`` voxels (x, y, z) whose centre is the origin of LPS space."""
    direction = tuple(float(v) for v in (direction if direction is not None else np.eye(3).ravel()))
    reference = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    reference.SetSpacing([float(v) for v in spacing])
    reference.SetDirection(direction)
    index_to_mm = np.asarray(direction).reshape(3, 3) * np.asarray(spacing, float)[None, :]
    reference.SetOrigin(tuple(-index_to_mm @ ((np.asarray(size, float) - 1.0) / 2.0)))
    return reference


def _physical_points(reference: sitk.Image) -> np.ndarray:
    """(3, Z, Y, X) LPS mm coordinates (x, y, z) of every voxel centre of ``reference``."""
    size = reference.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    index_to_mm = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())[None, :]
    points = np.einsum("rc,czyx->rzyx", index_to_mm, np.stack((i, j, k)))
    return points + np.asarray(reference.GetOrigin()).reshape(3, 1, 1, 1)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], coarse: int) -> np.ndarray:
    """Unit-variance noise, white on a grid ``coarse`` times coarser, trilinear on the same box."""
    small = rng.normal(0.0, 1.0, [max(2, n // coarse) for n in shape])
    out = ndimage.zoom(small, [n / m for n, m in zip(shape, small.shape)], order=1, mode="nearest", grid_mode=True)
    return out / max(float(out.std()), 1e-6)


def smooth_random_field(reference: sitk.Image, max_mm: float, seed: int = 0, control_points: int = 4) -> sitk.Image:
    """A smooth random displacement field (LPS mm, VectorFloat64) on the grid of ``reference``
    whose largest component is ``max_mm``: random control points at the grid's corners and a
    regular lattice between them, trilinear in between."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, (3,) + (control_points,) * 3)
    shape = reference.GetSize()[::-1]
    d = np.stack([ndimage.zoom(c, [n / control_points for n in shape], order=1) for c in coarse], axis=-1)
    d *= max_mm / float(np.abs(d).max())
    field = sitk.GetImageFromArray(d.astype(np.float64), isVector=True)
    field.CopyInformation(reference)
    return field


@dataclasses.dataclass
class PhantomPair:
    """A registration problem with a known answer: ``fixed(x) = moving(x + true_field(x))``."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image
    moving_labels: sitk.Image
    true_field: sitk.Image  # VectorFloat64, LPS mm, on the fixed grid


def phantom_pair(size: Sequence[int] = (96, 80, 64), spacing: Sequence[float] = (3.0, 3.0, 3.0),
                 max_displacement_mm: float = 8.0, seed: int = 0, direction: Optional[Sequence[float]] = None,
                 moving_grid: Optional[Tuple[Sequence[int], Sequence[float], Optional[Sequence[float]]]] = None) -> PhantomPair:
    """A phantom (moving) and its warp by a smooth random field (fixed).

    The fixed grid is ``size``, ``spacing`` and ``direction`` as in :func:`phantom`; the moving
    image is on the same grid, or on ``moving_grid`` = (size, spacing, direction) when given (same
    physical space: both grids are centred on the origin). The field is on the fixed grid.
    """
    moving_size, moving_spacing, moving_direction = moving_grid or (size, spacing, direction)
    moving, moving_labels = phantom(moving_size, moving_spacing, moving_direction, seed=seed)
    reference = _centred_reference(size, spacing, direction)
    field = smooth_random_field(reference, max_displacement_mm, seed=seed + 1)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))  # the transform takes the image's buffer
    fixed = sitk.Resample(moving, reference, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    fixed_labels = sitk.Resample(moving_labels, reference, transform, sitk.sitkNearestNeighbor, 0)
    return PhantomPair(fixed, moving, fixed_labels, moving_labels, field)
