"""A synthetic abdominal CT phantom and pairs with a known deformation (demo and tests).

The phantom is defined in physical millimetres (so any spacing works): an elliptic body of fat
and muscle, a vertebra, aorta, liver, spleen, kidneys, stomach and gallbladder as ellipsoids with
CT-like HU values, smooth texture and noise. Labels follow the Learn2Reg abdominal ids where
they exist: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, 7 stomach, 8 aorta,
14 vertebra.

:func:`phantom_pair` makes a pair with a *known answer*: the fixed image is the moving image
warped by a smooth random field d (mm), so ``fixed(x) = moving(x + d(x))`` and d is exactly
the field a registration should find.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import Grid, image_to_mm_field, mm_field_to_image, resample_through_field, resize_volume

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
    direction = tuple(float(v) for v in (direction or np.eye(3).ravel()))
    centre_index = (np.asarray(size) - 1) / 2.0
    a = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)[None, :]
    origin = -a @ centre_index
    grid = Grid(tuple(int(v) for v in size), tuple(float(v) for v in spacing), tuple(float(v) for v in origin), direction)
    points = grid.physical_points()  # (3, Z, Y, X)
    x, y, z = points
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
    image_sitk = grid.apply_to(sitk.GetImageFromArray(image.astype(np.float32)))
    labels_sitk = grid.apply_to(sitk.GetImageFromArray(labels))
    return image_sitk, labels_sitk


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], coarse: int) -> np.ndarray:
    small = torch.from_numpy(rng.normal(0.0, 1.0, [max(2, n // coarse) for n in shape]).astype(np.float32))
    out = resize_volume(small[None, None], tuple(shape))[0, 0].numpy()
    return out / max(float(out.std()), 1e-6)


def smooth_random_field(grid: Grid, max_mm: float, seed: int = 0, control_points: int = 4) -> sitk.Image:
    """A smooth random displacement field (mm) on ``grid`` whose largest component is ``max_mm``."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 3) + (control_points,) * 3).astype(np.float32))
    d = torch.nn.functional.interpolate(coarse, size=grid.shape, mode="trilinear", align_corners=True)
    d *= max_mm / float(d.abs().max())
    return mm_field_to_image(d, grid)


@dataclasses.dataclass
class PhantomPair:
    """A registration problem with a known answer: ``fixed(x) = moving(x + true_field(x))``."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image
    moving_labels: sitk.Image
    true_field: sitk.Image  # VectorFloat64, LPS mm, on the fixed grid


def phantom_pair(size: Sequence[int] = (96, 80, 64), spacing: Sequence[float] = (3.0, 3.0, 3.0),
                 max_displacement_mm: float = 8.0, seed: int = 0) -> PhantomPair:
    """A phantom (moving) and its warp by a smooth random field (fixed)."""
    moving, moving_labels = phantom(size, spacing, seed=seed)
    grid = Grid.from_image(moving)
    field = smooth_random_field(grid, max_displacement_mm, seed=seed + 1)
    d = image_to_mm_field(field, torch.device("cpu"))
    device = torch.device("cpu")
    mov_t = torch.from_numpy(sitk.GetArrayFromImage(moving))[None, None]
    lab_t = torch.from_numpy(sitk.GetArrayFromImage(moving_labels).astype(np.float32))[None, None]
    fixed_arr = resample_through_field(mov_t.to(device), grid, grid, d, "bilinear", -1000.0)[0, 0].numpy()
    fixed_lab = resample_through_field(lab_t.to(device), grid, grid, d, "nearest", 0.0)[0, 0].numpy()
    fixed = grid.apply_to(sitk.GetImageFromArray(fixed_arr.astype(np.float32)))
    fixed_labels = grid.apply_to(sitk.GetImageFromArray(np.round(fixed_lab).astype(np.uint8)))
    return PhantomPair(fixed, moving, fixed_labels, moving_labels, field)
