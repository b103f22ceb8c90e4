"""Coordinate descent between a discrete label field v and a smooth field u.

Energy (per level, cost C in feature units, u and v in voxels):
``E(v, u) = sum_x C(x, v(x)) + 1/(2 theta) * ||u(x) - v(x)||^2`` plus the smoothness of u, which
is imposed by the adaptive message passing: u = A^p(v).

* v-step: ``v(x) = argmin_o C(x, o) + w * ||u(x) - o||^2`` with ``w = 1 / (2 theta)`` (the first
  round is uncoupled, w = 0), a hard arg-min.
* u-step: ``u = A^p(v)``, the adaptive filter applied p times.

Tie rule (explicit): the zero offset wins when its energy is within a relative 1e-6 of the
minimum (so flat regions and full ties give zero displacement); among other equal labels the
one earliest in :func:`voxelopt.solver.cost.label_offsets` order (the shortest offset) wins.
Never a corner offset by accident.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .message_passing import smooth_

TIE_TOLERANCE = 1e-6


def argmin_labels(energy: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Arg-min offsets of an (L, N) energy with the tie rule; returns (3, N)."""
    best, index = torch.min(energy, dim=0)
    zero_wins = energy[0] <= best + TIE_TOLERANCE * (1.0 + best.abs())
    index.masked_fill_(zero_wins, 0)
    return offsets.index_select(0, index).t()


def coordinate_descent(
    cost: torch.Tensor,
    offsets: torch.Tensor,
    thetas: Sequence[float],
    w1: torch.Tensor,
    passes: int,
    check_cancel: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Run the v/u alternation and return the smooth field u (3, Z, Y, X), voxels of the level.

    Args:
        cost: (L, Z, Y, X) cost (possibly pre-filtered); not modified.
        offsets: (L, 3) offsets, zero first.
        thetas: coupling schedule (paper's theta; weight 1/(2 theta)).
        w1: (Z, Y, X) message-passing neighbour weights.
        passes: filter passes per u-step.
        check_cancel: called between rounds; raises to cancel.
    """
    labels, spatial = cost.shape[0], cost.shape[1:]
    flat = cost.reshape(labels, -1)
    n = flat.shape[1]
    scratch = torch.empty((3,) + tuple(spatial), dtype=cost.dtype, device=cost.device)
    # v-step energy as one matrix product: C + w * (|o|^2 - 2 o.u) = C + [o, |o|^2] @ [-2 w u; w]
    coeff = torch.cat([offsets, (offsets**2).sum(1, keepdim=True)], dim=1)  # (L, 4)
    rhs = torch.empty((4, n), dtype=cost.dtype, device=cost.device)
    energy = torch.empty_like(flat)

    v = argmin_labels(flat, offsets)
    u = smooth_(v.reshape((3,) + tuple(spatial)).contiguous(), w1, passes, scratch)
    for theta in thetas:
        if check_cancel is not None:
            check_cancel()
        weight = 1.0 / (2.0 * theta)
        torch.mul(u.reshape(3, n), -2.0 * weight, out=rhs[:3])
        rhs[3].fill_(weight)
        torch.addmm(flat, coeff, rhs, out=energy)
        v = argmin_labels(energy, offsets)
        u = smooth_(v.reshape((3,) + tuple(spatial)).contiguous(), w1, passes, scratch)
    return u
