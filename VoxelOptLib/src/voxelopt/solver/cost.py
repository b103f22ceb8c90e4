"""Label offsets and the L1 cost volume.

The solver works with a *cost* (lower is better), the negative of the paper's similarity:
``C(x, o) = mean_c |m_c(x + o) - f_c(x)|`` over the (2k+1)^3 integer offsets o (voxels of the
level). Moving features beyond the volume repeat the border voxel.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def label_offsets(k: int, device: torch.device) -> torch.Tensor:
    """The (2k+1)^3 integer offsets as an (L, 3) float tensor, channel c along array axis c.

    Ordered by squared length, then lexicographically: the zero offset is label 0, then the
    6 face neighbours, the 12 edge neighbours and so on. The solver's tie rule relies on this
    order (among equally good labels the shortest offset wins).
    """
    rng = range(-k, k + 1)
    offsets = sorted(itertools.product(rng, rng, rng), key=lambda o: (sum(v * v for v in o), o))
    return torch.tensor(offsets, dtype=torch.float32, device=device)


def cost_volume(moving: torch.Tensor, fixed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Mean-L1 cost of every offset.

    Args:
        moving, fixed: (1, C, Z, Y, X) features on the same grid.
        offsets: (L, 3) integer offsets from :func:`label_offsets`.

    Returns:
        (L, Z, Y, X) float32 cost.
    """
    k = int(offsets.abs().max().item())
    _, channels, Z, Y, X = fixed.shape
    padded = F.pad(moving, [k] * 6, mode="replicate")[0]
    fix = fixed[0]
    cost = torch.empty((offsets.shape[0], Z, Y, X), dtype=torch.float32, device=fixed.device)
    diff = torch.empty_like(fix)
    for label, (dz, dy, dx) in enumerate(offsets.to("cpu", torch.long).tolist()):
        shifted = padded[:, k + dz: k + dz + Z, k + dy: k + dy + Y, k + dx: k + dx + X]
        torch.sub(shifted, fix, out=diff).abs_()
        torch.sum(diff, dim=0, out=cost[label])
    return cost.div_(channels)
