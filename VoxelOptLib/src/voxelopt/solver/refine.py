"""Optional continuous refinement of the discrete solution (instance optimisation).

The pyramid's field is made of whole-voxel labels smoothed by the message passing, so it
resolves motion to about half a working voxel. This step polishes it by gradient descent (Adam)
on the working grid, in the spirit of ConvexAdam's second stage (not in the VoxelOpt paper):

``minimise  C * mean_{x, c} (m_c(x + S(u)(x)) - f_c(x))^2  +  weight * sum_axes mean |grad S(u)|^2``

where S is three 3x3x3 box filters (a B-spline-like smoother with replicated borders), u starts
at the discrete field, and the feature maps are those of the finest level. Units: u in voxels of
the working grid; ``weight`` is dimensionless (features in [0, 1]); Adam's step is 1 voxel.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..geometry import warp

#: Adam learning rate (voxels per step), as ConvexAdam's.
LEARNING_RATE = 1.0


def smooth_field(u: torch.Tensor) -> torch.Tensor:
    """Three 3x3x3 box filters with replicated borders (differentiable)."""
    for _ in range(3):
        u = F.avg_pool3d(F.pad(u, [1] * 6, mode="replicate"), 3, stride=1)
    return u


def refine_field(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor, iterations: int, weight: float,
                 check_cancel: Optional[Callable[[], None]] = None) -> torch.Tensor:
    """Refine a voxel field (1, 3, Z, Y, X) for ``iterations`` Adam steps; returns the smoothed field."""
    if iterations <= 0:
        return field
    channels = fixed.shape[1]
    with torch.enable_grad():
        u = field.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([u], lr=LEARNING_RATE)
        for _ in range(iterations):
            if check_cancel is not None:
                check_cancel()
            optimiser.zero_grad(set_to_none=True)
            smooth = smooth_field(u)
            data = (warp(moving, smooth) - fixed).pow(2).mean() * channels
            regulariser = sum(smooth.diff(dim=axis).pow(2).mean() for axis in (2, 3, 4))
            (data + weight * regulariser).backward()
            optimiser.step()
    with torch.no_grad():
        return smooth_field(u)
