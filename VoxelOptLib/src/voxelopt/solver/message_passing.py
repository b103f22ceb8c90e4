"""Voxel-adaptive separable Gaussian message passing.

One filtering pass replaces every voxel by ``w(-1) X(x - e) + w(0) X(x) + w(+1) X(x + e)`` along
z, then y, then x, with the weights of the *centre* voxel x (a gather filter; w(-1) = w(+1)).
Neighbours beyond the border repeat the border voxel, so a constant field stays constant.
The same weights apply to every channel (27 cost labels, or 3 flow components). It runs in
place with one scratch buffer, the cost of three element-wise passes per axis.
"""

from __future__ import annotations

from typing import Optional

import torch


def _smooth_axis_(x: torch.Tensor, w1: torch.Tensor, dim: int, scratch: torch.Tensor) -> None:
    n = x.shape[dim]
    if n == 1:
        return
    # scratch = X(x - e) + X(x + e) - 2 X(x), with replicated borders
    if n > 2:
        torch.add(x.narrow(dim, 0, n - 2), x.narrow(dim, 2, n - 2), out=scratch.narrow(dim, 1, n - 2))
    torch.add(x.narrow(dim, 0, 1), x.narrow(dim, 1, 1), out=scratch.narrow(dim, 0, 1))
    torch.add(x.narrow(dim, n - 2, 1), x.narrow(dim, n - 1, 1), out=scratch.narrow(dim, n - 1, 1))
    scratch.add_(x, alpha=-2.0)
    x.addcmul_(scratch, w1)


def smooth_(x: torch.Tensor, w1: torch.Tensor, passes: int = 3, scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply the adaptive filter ``passes`` times to x (C, Z, Y, X) in place; returns x.

    Args:
        x: (C, Z, Y, X) float tensor, modified in place.
        w1: (Z, Y, X) neighbour weights from :func:`voxelopt.solver.entropy.neighbour_weight`.
        passes: number of three-axis passes.
        scratch: optional buffer shaped like x.
    """
    if scratch is None:
        scratch = torch.empty_like(x)
    for _ in range(passes):
        for dim in (1, 2, 3):
            _smooth_axis_(x, w1, dim, scratch)
    return x
