"""The peak memory of a registration, estimated before it starts, against the free memory of its
device: a registration that would not fit is refused with a clear message instead of being
killed by the system halfway.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from .config import RegistrationConfig
from .errors import InputError
from .geometry import Grid
from .inputs import CheckedPair, PreparedPair
from .metrics import MAX_TRANSFORM_BOX_VOXELS, TRANSFORM_BYTES_PER_VOXEL
from .outputs import SLAB_VOXELS

#: Share of the free memory a registration may plan to use.
MEMORY_SHARE = 0.9
#: Feature channels assumed by the memory estimate (MIND-SSC's 12; the networks' are of that order).
ESTIMATED_CHANNELS = 12


def check_memory(prepared: Union[CheckedPair, PreparedPair], config: RegistrationConfig, device: torch.device,
                 with_labels: bool) -> int:
    """Refuse a registration that would not fit in ``device``'s free memory; returns the estimate (bytes)."""
    k_finest = config.search_radius(finest=True)
    needed = estimate_peak_bytes(prepared.fixed, prepared.moving, prepared.feature_grid, prepared.working_grid,
                                 config.k, k_finest, ESTIMATED_CHANNELS, with_labels)
    free = available_bytes(device)
    if free is not None and needed > MEMORY_SHARE * free:
        grid = "x".join(str(n) for n in prepared.feature_grid.size)
        raise InputError(
            f"this registration needs about {human_bytes(needed)} on {device} but only {human_bytes(free)} is free "
            f"(feature grid {grid} voxels at {config.feature_spacing} mm, search radius {config.k}, "
            f"{k_finest} at the finest level); "
            "use a coarser feature_spacing or working_scale, a smaller k or k_finest, or another device"
        )
    return needed


def estimate_peak_bytes(fixed: sitk.Image, moving: sitk.Image, feature_grid: Grid, working_grid: Grid, k: int,
                        k_finest: int, channels: int, with_labels: bool) -> int:
    """A conservative estimate of the peak memory (bytes) of one registration on one device.

    Counts the inputs, the larger of the feature stage (both images' feature maps and their
    working copies) and the solver (cost volume, its filtered copy and softmax, at the finest
    level with search radius ``k_finest`` or at the next with ``k``, whichever is larger), and the
    streamed outputs (the warped image in the moving pixel type, label maps, slab buffers) with,
    for labels, two label scores' working memory at once (they run beside the warps: surface
    marks over the labelled box, at most the fixed grid, and the distance transforms' buffers,
    at most :data:`voxelopt.metrics.MAX_TRANSFORM_BOX_VOXELS` voxels of 9 bytes).
    """
    def voxels(grid_or_image) -> int:
        size = grid_or_image.size if isinstance(grid_or_image, Grid) else grid_or_image.GetSize()
        return int(np.prod(size))

    fixed_bytes = voxels(fixed) * fixed.GetSizeOfPixelComponent()
    moving_bytes = voxels(moving) * moving.GetSizeOfPixelComponent()
    features = voxels(feature_grid) * 4 * (2 * channels + 4)
    solver = voxels(working_grid) * 4 * max(3 * (2 * k_finest + 1) ** 3 + 4 * channels,
                                            (3 * (2 * k + 1) ** 3 + 4 * channels) // 8)
    outputs = voxels(fixed) * moving.GetSizeOfPixelComponent() + SLAB_VOXELS * 4 * 16
    scores = 2 * (voxels(fixed) + TRANSFORM_BYTES_PER_VOXEL * min(voxels(fixed), MAX_TRANSFORM_BOX_VOXELS))
    labels = 2 * (voxels(fixed) + voxels(moving)) + scores if with_labels else 0
    return int(fixed_bytes + moving_bytes + labels + max(features, solver) + outputs)


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def human_bytes(n: float) -> str:
    """``n`` bytes as GB or MB text."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{math.ceil(n / 1e6)} MB"
