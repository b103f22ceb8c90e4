"""MIND-SSC features (Heinrich et al., MICCAI 2013), written from the definition.

For the six neighbours at +-d voxels along each axis, take the 12 pairs of neighbours that are
adjacent (squared distance 2 d^2). For each pair (a, b) the patch distance is the box mean over
(2r+1)^3 voxels of ``(I(x + a) - I(x + b))^2``. With ``D_min`` the smallest of the 12 distances
and ``V`` their mean excess over it (clamped to [0.001, 1000] times its volume mean), the
descriptor is ``exp(-(D - D_min) / V)``: 12 channels in [0, 1], invariant to contrast.
Image borders are replicated. ``radius`` and ``dilation`` are in voxels of the input grid.
"""

from __future__ import annotations

import itertools
from typing import List, Tuple

import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..geometry import image_to_tensor, window_hu
from .base import FeatureExtractor


def _pairs(dilation: int) -> List[Tuple[Tuple[int, int, int], Tuple[int, int, int]]]:
    """The 12 pairs of six-neighbourhood offsets at squared distance 2 d^2."""
    six = []
    for axis in range(3):
        for sign in (-1, 1):
            o = [0, 0, 0]
            o[axis] = sign * dilation
            six.append(tuple(o))
    return [
        (a, b)
        for a, b in itertools.combinations(six, 2)
        if sum((p - q) ** 2 for p, q in zip(a, b)) == 2 * dilation**2
    ]


def _box_sum_axis(x: torch.Tensor, radius: int, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Sum over a window of 2r+1 voxels along ``dim`` (replicated borders), written to ``out``."""
    n = x.shape[dim]
    out.copy_(x)
    for s in range(1, radius + 1):
        if s >= n:  # window wider than the axis: the replicated border voxel stands in
            out.add_(x.narrow(dim, n - 1, 1)).add_(x.narrow(dim, 0, 1))
            continue
        out.narrow(dim, 0, n - s).add_(x.narrow(dim, s, n - s))
        out.narrow(dim, n - s, s).add_(x.narrow(dim, n - 1, 1))
        out.narrow(dim, s, n - s).add_(x.narrow(dim, 0, n - s))
        out.narrow(dim, 0, s).add_(x.narrow(dim, 0, 1))
    return out


#: Slices (and rows) per block of :func:`_box_sum_3d`: a block of one channel stays in the cache
#: across the passes along its axes (192x160x256, 12 channels, 2 threads: 0.41-0.49 -> 0.30 s).
BOX_BLOCK = 16


def _box_sum_3d(x: torch.Tensor, radius: int, out: torch.Tensor) -> torch.Tensor:
    """The (2r+1)^3 box sum (replicated borders) of each channel of ``x`` (C, Z, Y, X), written to
    ``out``; ``x`` is overwritten (used as scratch).

    The sums of :func:`_box_sum_axis` along Z, then Y, then X over the whole volume, added in the
    same order (bit-identical). On the CPU block by block, so that each block is still in the
    cache for its next pass: along Z in blocks of rows, then along Y and X in blocks of slices;
    on a GPU (where each small pass would cost a kernel launch) over the whole volume.
    """
    if x.device.type != "cpu":
        _box_sum_axis(x, radius, 1, out)
        _box_sum_axis(out, radius, 2, x)
        return _box_sum_axis(x, radius, 3, out)
    channels, depth, height = x.shape[:3]
    for c in range(channels):
        for y0 in range(0, height, BOX_BLOCK):
            _box_sum_axis(x[c, :, y0:y0 + BOX_BLOCK], radius, 0, out[c, :, y0:y0 + BOX_BLOCK])
        for z0 in range(0, depth, BOX_BLOCK):
            block, scratch = out[c, z0:z0 + BOX_BLOCK], x[c, z0:z0 + BOX_BLOCK]
            _box_sum_axis(block, radius, 1, scratch)
            _box_sum_axis(scratch, radius, 2, block)
    return out


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC of a (1, 1, Z, Y, X) image; returns (1, 12, Z, Y, X) float32 in [0, 1].

    Every step works in place on two 12-channel buffers (memory: about 3x the output).
    """
    if image.dim() != 5 or image.shape[:2] != (1, 1):
        raise ValueError("mind_ssc expects a (1, 1, Z, Y, X) tensor")
    d = dilation
    Z, Y, X = image.shape[2:]
    padded = F.pad(image.float(), [d] * 6, mode="replicate")[0, 0]

    def shifted(o: Tuple[int, int, int]) -> torch.Tensor:
        return padded[d + o[0]: d + o[0] + Z, d + o[1]: d + o[1] + Y, d + o[2]: d + o[2] + X]

    pairs = _pairs(d)
    dist = torch.empty((len(pairs), Z, Y, X), dtype=torch.float32, device=image.device)
    for c, (a, b) in enumerate(pairs):
        torch.sub(shifted(a), shifted(b), out=dist[c]).square_()
    if radius > 0:
        scratch = torch.empty_like(dist)
        _box_sum_3d(dist, radius, scratch)
        dist = scratch
    # The box *sum* differs from the mean by a constant factor that cancels in (D - min) / V.
    dist -= dist.amin(dim=0, keepdim=True)
    variance = dist.mean(dim=0, keepdim=True)
    mean_v = float(variance.mean())
    floor = 1e-12
    variance.clamp_(min=max(mean_v * 1e-3, floor), max=max(mean_v * 1e3, floor))
    return dist.div_(variance).neg_().exp_()[None]


class MindSSC(FeatureExtractor):
    """12-channel MIND-SSC of the windowed intensity."""

    name = "mind"

    def __init__(self, window: Tuple[float, float] = (-800.0, 500.0), radius: int = 2, dilation: int = 2):
        self.window = (float(window[0]), float(window[1]))
        self.radius = int(radius)
        self.dilation = int(dilation)

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        x = window_hu(image_to_tensor(image, device), self.window)
        return mind_ssc(x, self.radius, self.dilation)[0]

    def cache_key(self) -> str:
        return f"mind(window={self.window}, r={self.radius}, d={self.dilation})"
