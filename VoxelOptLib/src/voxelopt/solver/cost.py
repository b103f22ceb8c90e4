"""Label offsets and the L1 cost volume.

The solver works with a *cost* (lower is better), the negative of the paper's similarity:
``C(x, o) = mean_c |m_c(x + o) - f_c(x)|`` over the (2k+1)^3 integer offsets o (voxels of the
level). Moving features beyond the volume repeat the border voxel.

Masks (1 = use the voxel, 0 = ignore it, values in between blend) restrict the cost: where the
fixed mask at x or the moving mask at x + o is below 1, ``C(x, o)`` is pulled towards the
voxel's mean cost over all offsets, which carries no information about the displacement. A
voxel that is fully masked out gets the same cost for every offset (maximal entropy, zero
offset by the tie rule), so the message passing fills its displacement in from its neighbours.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F


def label_offsets(k: Union[int, Sequence[int]], device: torch.device) -> torch.Tensor:
    """The (2k+1)^3 integer offsets as an (L, 3) float tensor, channel c along array axis c.

    ``k`` is the search radius in voxels, or one radius per array axis (z, y, x), giving
    ``prod(2 k_a + 1)`` offsets.

    Ordered by squared length, then lexicographically: the zero offset is label 0, then the
    6 face neighbours, the 12 edge neighbours and so on. The solver's tie rule relies on this
    order (among equally good labels the shortest offset wins).
    """
    radii = (k, k, k) if isinstance(k, int) else tuple(int(r) for r in k)
    offsets = sorted(itertools.product(*(range(-r, r + 1) for r in radii)), key=lambda o: (sum(v * v for v in o), o))
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


def mask_cost_(cost: torch.Tensor, offsets: torch.Tensor, fixed_mask: Optional[torch.Tensor],
               moving_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Restrict a cost volume to the masks, in place (see the module docstring).

    Args:
        cost: (L, Z, Y, X) cost from :func:`cost_volume`, modified in place.
        offsets: the (L, 3) offsets it was computed with.
        fixed_mask: (Z, Y, X) weights in [0, 1] of the fixed voxels, or None.
        moving_mask: (Z, Y, X) weights in [0, 1] of the moving image already warped onto the
            fixed grid like the moving features (sampled at x + o, border repeated), or None.

    Returns ``cost``. Voxels whose weight is exactly 1 for an offset keep that cost bit for bit.
    """
    if fixed_mask is None and moving_mask is None:
        return cost
    Z, Y, X = cost.shape[1:]
    k = int(offsets.abs().max().item())
    mean = cost.mean(dim=0)
    fixed_weight = torch.ones((Z, Y, X), dtype=cost.dtype, device=cost.device) if fixed_mask is None else fixed_mask
    padded = None if moving_mask is None else F.pad(moving_mask[None, None], [k] * 6, mode="replicate")[0, 0]
    for label, (dz, dy, dx) in enumerate(offsets.to("cpu", torch.long).tolist()):
        weight = fixed_weight
        if padded is not None:
            weight = weight * padded[k + dz: k + dz + Z, k + dy: k + dy + Y, k + dx: k + dx + X]
        torch.lerp(mean, cost[label], weight, out=cost[label])
    return cost
