"""Optional continuous (sub-voxel) refinement of the discrete solution.

The pyramid's field is made of whole-voxel labels smoothed by the message passing, so it
resolves motion to about half a working voxel. This step polishes it on the working grid with
the finest level's features by a few Gauss-Newton steps in the manner of the demons algorithm
(not in the VoxelOpt paper):

1. residual ``r_c(x) = m_c(x + u(x)) - f_c(x)``, linearised with the *fixed* features'
   gradient ``g_c = grad f_c`` (central differences, per voxel), as the moving features'
   gradient at x + u is close to it once aligned;
2. per voxel, the damped Gauss-Newton step of ``sum_c M (r_c + g_c . delta)^2``:
   ``delta = -(H + lambda I)^-1 sum_c M r_c g_c`` with ``H = sum_c M_f g_c g_c^T``, where M is the
   product of the fixed mask M_f and the warped moving mask (1 without masks) and
   ``lambda = weight * mean(trace H) / 3`` (so ``weight`` is dimensionless); steps are capped at
   ``MAX_STEP`` voxels. H and its inverse depend on the fixed features only: computed once;
   the iterations stop early when a step does not lower the masked data term (the field before
   that step is returned);
3. the smoothed step is composed with the field, ``u <- s + u o (id + s)`` with ``s = S(delta)``
   (``x -> x + s(x)`` first, then the field: the update of diffeomorphic demons), where S is
   three 3x3x3 box filters (:func:`smooth_field`): the steps are smooth and the discrete
   solution's own shape is kept (smoothing the whole field instead flattened large
   inter-patient deformations: -8 Dice points on a pseudo-CT pair). Adding the steps
   (``u <- u + s``) folded 0.5-1.9 % of the voxels after 40 steps on pseudo-CT pairs; composing
   them folded 0-0.02 % at the same Dice (``benchmarks/choose_default.py``).

Units: u and delta in voxels of the working grid. Every operation is a whole-volume tensor
operation (CPU or CUDA); the 3x3 systems are inverted in closed form. One iteration costs one
warp of the moving features and a few passes over them.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from ..geometry import resize_volume, resize_voxel_field, warp

#: Largest step of one iteration, voxels (the linearisation holds within about a voxel).
MAX_STEP = 0.5


#: Three 3-tap box filters in a row, as one 7-tap kernel (1, 3, 6, 7, 6, 3, 1) / 27.
_SMOOTHING_TAPS = (1.0, 3.0, 6.0, 7.0, 6.0, 3.0, 1.0)


def smooth_field(u: torch.Tensor) -> torch.Tensor:
    """Three 3x3x3 box filters of a (1, C, Z, Y, X) tensor, borders replicated (once, by 3 voxels).

    Applied as one separable 7-tap kernel per axis, as seven shifted multiply-adds (on the CPU 7x
    faster at 48x40x64 and 14x at 96x80x128 than ``conv3d`` with a 7-tap kernel, which PyTorch
    runs as a general convolution; the same sums in the same order).
    """
    x = F.pad(u, [3] * 6, mode="replicate")
    for dim in (2, 3, 4):
        length = x.shape[dim] - 6
        out = x.narrow(dim, 0, length) * (_SMOOTHING_TAPS[0] / 27.0)
        for shift in range(1, 7):
            out.add_(x.narrow(dim, shift, length), alpha=_SMOOTHING_TAPS[shift] / 27.0)
        x = out
    return x


def _gradient(x: torch.Tensor) -> List[torch.Tensor]:
    """Central differences of (..., Z, Y, X) along z, y, x (per voxel; one-sided at borders)."""
    out = []
    for dim in (x.dim() - 3, x.dim() - 2, x.dim() - 1):
        n = x.shape[dim]
        if n < 2:
            out.append(torch.zeros_like(x))
            continue
        padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, n - 1, 1)], dim=dim)
        out.append((padded.narrow(dim, 2, n) - padded.narrow(dim, 0, n)) * 0.5)
    return out


def _inverse_damped(h: List[torch.Tensor], damping: torch.Tensor) -> List[torch.Tensor]:
    """Per-voxel inverse of ``H + damping I``; H and the result as their 6 entries
    (zz, yy, xx, zy, zx, yx), each (Z, Y, X) (symmetric positive definite: cofactors)."""
    a, d, f, b, c, e = h[0] + damping, h[1] + damping, h[2] + damping, h[3], h[4], h[5]
    i00, i11, i22 = d * f - e * e, a * f - c * c, a * d - b * b
    i01, i02, i12 = c * e - b * f, b * e - c * d, b * c - a * e
    det = (a * i00 + b * i01 + c * i02).clamp_min(1e-20)
    return [v / det for v in (i00, i11, i22, i01, i02, i12)]


def refine_field(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor, iterations: int, weight: float,
                 check_cancel: Optional[Callable[[], None]] = None, fixed_mask: Optional[torch.Tensor] = None,
                 moving_mask: Optional[torch.Tensor] = None, grid_scale: float = 1.0) -> torch.Tensor:
    """Refine a voxel field (1, 3, Z, Y, X); with ``grid_scale`` < 1 the steps run on a grid
    scaled by it (same box) and the change they make is interpolated back onto the field's grid."""
    if iterations <= 0 or grid_scale >= 1.0:
        return _refine(moving, fixed, field, iterations, weight, check_cancel, fixed_mask, moving_mask)
    shape = tuple(max(2, int(round(n * grid_scale))) for n in field.shape[2:])
    coarse = resize_voxel_field(field, shape)
    masks = [None if m is None else resize_volume(m, shape) for m in (fixed_mask, moving_mask)]
    refined = _refine(resize_volume(moving, shape), resize_volume(fixed, shape), coarse, iterations, weight,
                      check_cancel, *masks)
    return field + resize_voxel_field(refined - coarse, field.shape[2:])


def _refine(moving: torch.Tensor, fixed: torch.Tensor, field: torch.Tensor, iterations: int, weight: float,
            check_cancel: Optional[Callable[[], None]] = None, fixed_mask: Optional[torch.Tensor] = None,
            moving_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Refine a voxel field (1, 3, Z, Y, X) by ``iterations`` steps (see the module docstring).

    Args:
        moving, fixed: (1, C, Z, Y, X) features of the working grid.
        field: the discrete solution, voxels, ``warped(p) = moving(p + field(p))``.
        weight: damping of the Gauss-Newton step relative to the mean curvature (> 0).
        fixed_mask, moving_mask: optional (1, 1, Z, Y, X) weights in [0, 1] as in
            :func:`voxelopt.solver.solve_pyramid`.
    """
    if iterations <= 0:
        return field
    grad = torch.stack(_gradient(fixed[0]), dim=0)  # (3, C, Z, Y, X)
    if fixed_mask is not None:
        grad = grad * fixed_mask[0].sqrt()  # M_f enters H once through each gradient
    pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    h = [(grad[i] * grad[j]).sum(dim=0) for i, j in pairs]
    inverse = _inverse_damped(h, weight * (h[0] + h[1] + h[2]).mean() / 3.0 + 1e-12)
    del h
    i00, i11, i22, i01, i02, i12 = inverse
    root_mask = None if fixed_mask is None else fixed_mask[0].sqrt()

    def residual_of(u: torch.Tensor) -> torch.Tensor:
        residual = warp(moving, u)[0].sub_(fixed[0])  # (C, Z, Y, X)
        if root_mask is not None:
            residual.mul_(root_mask)
        if moving_mask is not None:
            residual.mul_(warp(moving_mask, u)[0])
        return residual

    u = field.detach()
    residual = residual_of(u)
    cost = float(residual.square().mean())
    for _ in range(iterations):
        if check_cancel is not None:
            check_cancel()
        b0, b1, b2 = (grad * residual).sum(dim=1)  # (Z, Y, X) each
        step = -torch.stack([i00 * b0 + i01 * b1 + i02 * b2,
                             i01 * b0 + i11 * b1 + i12 * b2,
                             i02 * b0 + i12 * b1 + i22 * b2])
        # |step| per voxel as a sum of three planes: torch's norm over the leading dimension took
        # 20 ms of each 40 ms iteration on the CPU (48x40x64)
        length = torch.addcmul(torch.addcmul(step[0] * step[0], step[1], step[1]), step[2], step[2]).sqrt_()
        step = step * (MAX_STEP / length.clamp_min_(MAX_STEP))
        smooth_step = smooth_field(step[None])
        candidate = smooth_step + warp(u, smooth_step)  # u o (id + s), then + s
        candidate_residual = residual_of(candidate)
        candidate_cost = float(candidate_residual.square().mean())
        if candidate_cost >= cost:  # early stop: the step no longer lowers the data term
            break
        u, residual, cost = candidate, candidate_residual, candidate_cost
    return u
