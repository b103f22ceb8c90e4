"""Displacement entropy, the per-voxel sigma map and the adaptive filter weights.

* Entropy (nats) of the label distribution ``p(x, o) = softmax_o(-beta * C(x, o))``: low where
  the cost singles out one displacement, up to ``ln(L)`` where every label is equally good.
* sigma (voxels) grows with the entropy, so uncertain voxels are smoothed more:
  - ``"code"`` form (official code): ``E^ = (E - min E) / (max E - min E)``, ``E^ = log2(1 + E^)``,
    ``sigma = s_low + (s_high - s_low) * E^`` (default range 0.1-0.5 voxel);
  - ``"paper"`` form: ``sigma = alpha * ln(E / max E + 1)``.
* The 3-tap Gaussian weights of a voxel with sigma s are ``w(n) ~ exp(-n^2 / (2 s^2))`` for
  n in {-1, 0, 1}, normalised; only ``w(+-1)`` is stored (``w(0) = 1 - 2 w(1)``); weights below
  1e-7 are set to 0 (sigma < 0.18 voxel filters nothing).
"""

from __future__ import annotations

from typing import Tuple

import torch


def displacement_entropy(cost: torch.Tensor, beta: float, chunk: int = 16) -> torch.Tensor:
    """Entropy (nats) over labels of ``softmax(-beta * cost)``; cost (L, Z, Y, X) -> (Z, Y, X)."""
    out = torch.empty(cost.shape[1:], dtype=torch.float32, device=cost.device)
    for z0 in range(0, cost.shape[1], chunk):
        logits = cost[:, z0: z0 + chunk] * (-beta)
        log_p = torch.log_softmax(logits, dim=0)
        out[z0: z0 + chunk] = -(log_p.exp() * log_p).sum(0)
    return out


def sigma_from_entropy(
    entropy: torch.Tensor,
    mode: str = "code",
    sigma_range: Tuple[float, float] = (0.1, 0.5),
    alpha: float = 1.5,
) -> torch.Tensor:
    """Per-voxel sigma (voxels) from the entropy map (see the module docstring)."""
    if mode == "code":
        low, high = sigma_range
        e_min, e_max = entropy.min(), entropy.max()
        normalised = (entropy - e_min) / (e_max - e_min).clamp_min(1e-12)
        return low + (high - low) * torch.log2(1.0 + normalised)
    if mode == "paper":
        return alpha * torch.log(entropy / entropy.max().clamp_min(1e-12) + 1.0)
    raise ValueError(f"unknown sigma mode {mode!r}")


def neighbour_weight(sigma: torch.Tensor) -> torch.Tensor:
    """Weight w(+-1) of the normalised 3-tap Gaussian with standard deviation ``sigma`` (voxels)."""
    side = torch.exp(-0.5 / sigma.clamp_min(1e-6) ** 2)
    w1 = side / (1.0 + 2.0 * side)
    # Below 1e-7 a neighbour cannot change a float32 result, but repeated products of such tiny
    # weights make denormal numbers, which are 10-100x slower on CPUs: make them exact zeros.
    return w1.masked_fill_(w1 < 1e-7, 0.0)
