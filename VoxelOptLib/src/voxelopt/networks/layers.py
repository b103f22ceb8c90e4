"""Building blocks shared by the OBELISK-family networks."""

from __future__ import annotations

from typing import Sequence

import torch

from ..geometry import grid_sample


def lattice(shape: Sequence[int], centred: bool, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised sampling points of a regular lattice, as a (1, 1, N, 1, 3) tensor.

    Points are ordered with the first axis slowest (d-major); the last dimension holds
    ``(x, y, z)`` = (axis 2, axis 1, axis 0) as ``grid_sample`` expects.

    Args:
        shape: lattice size (d, h, w).
        centred: False for the corner lattice (``linspace(-1, 1, n)``), True for the centre
            lattice (``(2i + 1) / n - 1``).
    """
    axes = []
    for n in shape:
        if centred:
            axes.append((2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n - 1.0)
        else:
            axes.append(torch.linspace(-1.0, 1.0, n, dtype=torch.float64))
    zz, yy, xx = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    points = torch.stack((xx, yy, zz), dim=-1).reshape(1, 1, -1, 1, 3)
    return points.to(device=device, dtype=dtype)


def obelisk_sample(volume: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Deformable sampling: ``volume`` at every lattice point plus every learned offset.

    Args:
        volume: (B, C, D, H, W).
        points: (1, 1, N, 1, 3) normalised lattice with N = prod(shape).
        offsets: (1, K, 1, 1, 3) normalised offsets.
        shape: lattice size (d, h, w).

    Returns:
        (B, C*K, d, h, w); channel c*K + k holds input channel c sampled with offset k.
        Sampling is trilinear, zero outside, ``align_corners=True`` (the training semantics).
    """
    batch = volume.shape[0]
    k = offsets.shape[1]
    grid = (points + offsets).expand(batch, k, points.shape[2], 1, 3)
    sampled = grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled.reshape(batch, volume.shape[1] * k, *shape)
