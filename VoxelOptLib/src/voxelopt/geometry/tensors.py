"""Scalar SimpleITK images <-> torch tensors in array order (z, y, x)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from .grid import Grid
from .. import voxels


def image_to_tensor(image: sitk.Image, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scalar sitk image to a (1, 1, Z, Y, X) tensor."""
    arr = voxels.copy(image).astype(np.float32 if dtype.is_floating_point else np.int64, copy=False)
    return torch.from_numpy(arr).to(device, dtype)[None, None]


def tensor_to_image(x: torch.Tensor, grid: Grid, pixel_type: Optional[int] = None) -> sitk.Image:
    """(1, 1, Z, Y, X) or (Z, Y, X) tensor to a scalar sitk image on ``grid``."""
    arr = x.detach().reshape(grid.shape).cpu().numpy()
    image = sitk.GetImageFromArray(arr)
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return grid.apply_to(image)
