"""The multi-level solver: pyramid, per-level solve, scaling and squaring, composition.

All fields here are voxel fields (1, 3, Z, Y, X) of the level's grid (see :mod:`voxelopt.geometry`):
``warped_moving(p) = moving(p + U(p))``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..config import RegistrationConfig
from ..geometry import level_shapes, resize_volume, resize_voxel_field, warp
from .cost import cost_volume, label_offsets, mask_cost_
from .descent import coordinate_descent
from .entropy import displacement_entropy, neighbour_weight, sigma_from_entropy
from .message_passing import smooth_
from .refine import refine_field

Shape = Tuple[int, int, int]
#: Per array axis (z, y, x), a fraction in (0, 1] (see :func:`search_radii`).
Thickness = Tuple[float, float, float]


def scaling_and_squaring(r: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate the stationary velocity r: ``v = r / 2^steps``, then ``v <- v + v(p + v)`` steps times."""
    if steps == 0:
        return r
    v = r / (2.0**steps)
    for _ in range(steps):
        v = v + warp(v, v)
    return v


def compose(prior: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Total field of warping with ``prior`` then ``residual``: ``r(p) + prior(p + r(p))``."""
    return residual + warp(prior, residual)


@dataclasses.dataclass
class LevelOutput:
    residual: torch.Tensor  # (1, 3, Z, Y, X) integrated residual, voxels of the level
    entropy: torch.Tensor  # (Z, Y, X) nats
    sigma: torch.Tensor  # (Z, Y, X) voxels


def solve_level(moving: torch.Tensor, fixed: torch.Tensor, config: RegistrationConfig,
                check_cancel: Optional[Callable[[], None]] = None, fixed_mask: Optional[torch.Tensor] = None,
                moving_mask: Optional[torch.Tensor] = None, finest: bool = True,
                fixed_thickness: Thickness = (1.0, 1.0, 1.0)) -> LevelOutput:
    """One level: cost volume (restricted to the masks), entropy, sigma, optional cost filtering,
    coordinate descent, SS. Masks are (1, 1, Z, Y, X) in [0, 1] on the level's grid, the moving one
    already warped like ``moving``; ``finest`` says whether it is the pyramid's finest level (its
    search radius is ``config.k_finest`` when that is set); ``fixed_thickness`` as in
    :func:`search_radii`."""
    offsets = label_offsets(search_radii(config, fixed_mask, finest, fixed_thickness), fixed.device)
    cost = cost_volume(moving, fixed, offsets)
    mask_cost_(cost, offsets, None if fixed_mask is None else fixed_mask[0, 0],
               None if moving_mask is None else moving_mask[0, 0])
    entropy = displacement_entropy(cost, config.beta)
    if config.adaptive:
        sigma = sigma_from_entropy(entropy, config.sigma_mode, config.sigma_range, config.alpha)
    else:
        sigma = torch.full_like(entropy, config.fixed_sigma)
    w1 = neighbour_weight(sigma)
    if check_cancel is not None:
        check_cancel()
    if config.filter_cost:
        smooth_(cost, w1, config.smoothing_passes)
    u = coordinate_descent(cost, offsets, config.thetas, w1, config.smoothing_passes, check_cancel)
    del cost
    residual = scaling_and_squaring(u[None], config.ss_steps)
    return LevelOutput(residual, entropy, sigma)


def search_radii(config: RegistrationConfig, fixed_mask: Optional[torch.Tensor],
                 finest: bool = True, fixed_thickness: Thickness = (1.0, 1.0, 1.0)) -> Tuple[int, int, int]:
    """Search radius per array axis (z, y, x) of a level, voxels.

    The level's radius (:meth:`RegistrationConfig.search_radius`: ``k``, or ``k_finest`` at the
    finest level), capped along each axis at ``config.search_fraction`` of the fixed image's
    scanned thickness along it: the extent of the level's (1, 1, Z, Y, X) fixed mask along the
    axis (the planes where it is not all zero) times ``fixed_thickness`` along it (the scanned
    region's thickness as a fraction of that extent, :func:`voxelopt.masks.scanned_thickness`: 1
    for a box; less for a slab on a tilted grid, whose box also holds the tilt). So a thin or
    partial field of view is not searched beyond its own size. No mask: the level's radius on
    every axis.
    """
    k = config.search_radius(finest)
    if config.search_fraction == 0 or fixed_mask is None:
        return (k,) * 3
    present = fixed_mask[0, 0] > 0
    radii = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        extent = int(present.any(dim=others[1]).any(dim=others[0]).sum().item())
        radii.append(min(k, int(config.search_fraction * extent * fixed_thickness[axis])))
    return (radii[0], radii[1], radii[2])


@dataclasses.dataclass
class PyramidOutput:
    field: torch.Tensor  # (1, 3, Z, Y, X) voxels of the finest level
    entropy: torch.Tensor  # (Z, Y, X) finest-level entropy, nats
    sigma: torch.Tensor  # (Z, Y, X) finest-level sigma, voxels
    level_seconds: List[float]  # per level, coarsest first
    refine_seconds: Optional[float] = None  # the continuous refinement, when it ran


def solve_pyramid(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    config: RegistrationConfig,
    on_level: Optional[Callable[[int, int], None]] = None,
    check_cancel: Optional[Callable[[], None]] = None,
    clock: Optional[Callable[[], float]] = None,
    fixed_mask: Optional[torch.Tensor] = None,
    moving_mask: Optional[torch.Tensor] = None,
    fixed_thickness: Thickness = (1.0, 1.0, 1.0),
) -> PyramidOutput:
    """Coarse-to-fine registration of (1, C, Z, Y, X) feature maps on the same grid.

    Args:
        fixed_mask, moving_mask: optional (1, 1, Z, Y, X) weights in [0, 1] on the same grid
            (1 = use the voxel in the cost; the moving mask in the fixed space through the initial
            alignment, like ``moving``). Each level uses them downsampled, the moving mask warped
            with the level's field (see :func:`voxelopt.solver.cost.mask_cost_`).
        fixed_thickness: the fixed image's scanned thickness per axis (z, y, x) as a fraction of
            the fixed mask's extent (:func:`search_radii`).
        on_level: called as ``on_level(done, total)`` after each level.
        check_cancel: called between steps; raises to cancel.
        clock: a timer (e.g. one that synchronises CUDA) for per-level seconds.
    """
    shapes = level_shapes(fixed.shape[2:], config.levels)
    fixed_levels, moving_levels = _pyramid(fixed, shapes), _pyramid(moving, shapes)
    fixed_masks, moving_masks = _pyramid(fixed_mask, shapes), _pyramid(moving_mask, shapes)

    field: Optional[torch.Tensor] = None
    seconds: List[float] = []
    out: Optional[LevelOutput] = None
    for done, level in enumerate(reversed(range(len(shapes))), start=1):
        start = clock() if clock else 0.0
        if check_cancel is not None:
            check_cancel()
        mov, mov_mask = moving_levels[level], moving_masks[level]
        if field is not None:
            field = resize_voxel_field(field, shapes[level])
            mov = warp(mov, field)
            mov_mask = None if mov_mask is None else warp(mov_mask, field)
        out = solve_level(mov, fixed_levels[level], config, check_cancel, fixed_masks[level], mov_mask,
                          finest=level == 0, fixed_thickness=fixed_thickness)
        field = out.residual if field is None else compose(field, out.residual)
        seconds.append((clock() - start) if clock else 0.0)
        if on_level is not None:
            on_level(done, len(shapes))
    assert field is not None and out is not None
    refine_seconds = None
    if config.refine_iterations > 0:
        start = clock() if clock else 0.0
        field = refine_field(moving_levels[0], fixed_levels[0], field, config.refine_iterations, config.refine_weight,
                             check_cancel, fixed_mask, moving_mask, config.refine_scale)
        refine_seconds = (clock() - start) if clock else 0.0
    return PyramidOutput(field, out.entropy, out.sigma, seconds, refine_seconds)


def _pyramid(volume: Optional[torch.Tensor], shapes: Sequence[Shape]) -> List[Optional[torch.Tensor]]:
    """``volume`` resized to every level's shape, finest first (all None for None)."""
    if volume is None:
        return [None] * len(shapes)
    levels = [volume]
    for shape in shapes[1:]:
        levels.append(resize_volume(levels[-1], shape))
    return levels

