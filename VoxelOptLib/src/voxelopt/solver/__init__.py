"""The VoxelOpt solver: cost volume, entropy, adaptive message passing, coordinate descent, pyramid."""

from .cost import cost_volume, label_offsets, mask_cost_
from .descent import argmin_labels, coordinate_descent
from .entropy import displacement_entropy, neighbour_weight, sigma_from_entropy
from .message_passing import smooth_
from .pyramid import compose, level_shapes, scaling_and_squaring, solve_level, solve_pyramid

__all__ = [
    "argmin_labels",
    "compose",
    "coordinate_descent",
    "cost_volume",
    "displacement_entropy",
    "label_offsets",
    "mask_cost_",
    "level_shapes",
    "neighbour_weight",
    "scaling_and_squaring",
    "sigma_from_entropy",
    "smooth_",
    "solve_level",
    "solve_pyramid",
]
