"""Building blocks shared by the OBELISK-family networks."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import grid_sample, replicate_pad


def lattice(shape: Sequence[int], centred: bool, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised sampling points of a regular lattice, as a (1, 1, N, 1, 3) tensor.

    Points are ordered with the first axis slowest (d-major); the last dimension holds
    ``(x, y, z)`` = (axis 2, axis 1, axis 0) as ``grid_sample`` expects.

    Args:
        shape: lattice size (d, h, w).
        centred: False for the corner lattice (``linspace(-1, 1, n)``), True for the centre
            lattice (``(2i + 1) / n - 1``).
    """
    axes = []
    for n in shape:
        if centred:
            axes.append((2.0 * torch.arange(n, dtype=torch.float64) + 1.0) / n - 1.0)
        else:
            axes.append(torch.linspace(-1.0, 1.0, n, dtype=torch.float64))
    zz, yy, xx = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    points = torch.stack((xx, yy, zz), dim=-1).reshape(1, 1, -1, 1, 3)
    return points.to(device=device, dtype=dtype)


def deformable_samples(volume: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``volume`` (B, C, D, H, W) at every lattice point (``points``, (1, 1, N, 1, 3) normalised)
    plus every learned offset (``offsets``, (1, K, 1, 1, 3) normalised): (B, C, N, K), trilinear,
    zero outside, ``align_corners=True`` (the training semantics).

    The points are visited lattice point by lattice point, all offsets of one point together
    (its neighbourhood stays in cache: 0.86 -> 0.56 s for 512 offsets at 20x40x32 points of a
    256x160x160 volume on 2 cores)."""
    batch, channels = volume.shape[:2]
    k = offsets.shape[1]
    grid = (points.reshape(1, -1, 1, 1, 3) + offsets.reshape(1, 1, k, 1, 3)).expand(batch, -1, k, 1, 3)
    sampled = grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (B, C, N, K, 1)
    return sampled.view(batch, channels, -1, k)


def obelisk_sample(volume: torch.Tensor, points: torch.Tensor, offsets: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Deformable sampling (:func:`deformable_samples`) as a feature map.

    Args:
        volume: (B, C, D, H, W).
        points: (1, 1, N, 1, 3) normalised lattice with N = prod(shape).
        offsets: (1, K, 1, 1, 3) normalised offsets.
        shape: lattice size (d, h, w).

    Returns:
        (B, C*K, d, h, w); channel c*K + k holds input channel c sampled with offset k,
        channels-last in memory (a view) when C = 1, a copy otherwise.
    """
    samples = deformable_samples(volume, points, offsets)
    batch, channels, _, k = samples.shape
    return samples.view(batch, channels, *shape, k).permute(0, 1, 5, 2, 3, 4).reshape(batch, channels * k, *shape)


def linear_of_samples(samples: torch.Tensor, conv: nn.Conv3d, shape: Sequence[int]) -> torch.Tensor:
    """``conv(obelisk_sample(...))`` for a 1x1x1 ``conv`` (grouped or not, no bias), from the
    (B, C, N, K) :func:`deformable_samples` without reordering them into C*K channels: per input
    channel c, one matrix product of its (N, K) samples with the weights of channels c*K..c*K+K-1,
    accumulated into a channels-last (B, O, d, h, w) result. Same values up to float round-off;
    for C > 1 it saves the copy that puts the offsets behind the channels (PDD-Net: 2 x 0.3 s
    at 64x53x85 lattice points, 4 channels, 48 offsets)."""
    batch, channels, n, k = samples.shape
    out_channels, groups = conv.out_channels, conv.groups
    if conv.bias is not None or tuple(conv.kernel_size) != (1, 1, 1) or conv.in_channels != channels * k \
            or (conv.in_channels // groups) % k or channels % groups:
        raise ValueError(f"linear_of_samples needs a 1x1x1 convolution without bias over {channels} x {k} channels "
                         f"whose groups hold whole input channels, got {conv}")
    per_group_in, per_group_out = channels // groups, out_channels // groups
    weight = conv.weight.view(out_channels, -1)  # (O, C*K / groups)
    out = samples.new_zeros(batch, n, out_channels)
    for b in range(batch):
        for c in range(channels):
            g, within = divmod(c, per_group_in)
            rows = slice(g * per_group_out, (g + 1) * per_group_out)
            out[b, :, rows].addmm_(samples[b, c], weight[rows, within * k:(within + 1) * k].t())
    return out.view(batch, *shape, out_channels).permute(0, 4, 1, 2, 3)


def conv3d(t: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           padding: Union[int, Sequence[int]] = 0, stride: Union[int, Sequence[int]] = 1) -> torch.Tensor:
    """``F.conv3d``; on the CPU through oneDNN also where PyTorch's heuristic picks its slow
    reference kernel: an input whose batch, channel and first two spatial sizes multiply to at
    most 20480 (a thin scan in array order: 0.39 instead of 0.11 s for the first OBELISK layer
    at 72x184x176; 2-voxel slabs). Same values up to float round-off."""
    padding, stride = list(_triple(padding)), list(_triple(stride))
    if (t.device.type == "cpu" and t.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and t.shape[0] * t.shape[1] * t.shape[2] * t.shape[3] <= 20480):
        return torch.ops.aten.mkldnn_convolution(t, weight, bias, padding, stride, [1, 1, 1], 1)
    return F.conv3d(t, weight, bias, stride=stride, padding=padding)


def _triple(v: Union[int, Sequence[int]]) -> Sequence[int]:
    return (v,) * 3 if isinstance(v, int) else tuple(v)


def _upsampling_taps() -> torch.Tensor:
    """(2, 3, 3) float64 weights ``A[p, d + 1, t + 1]``: tap ``t`` (-1, 0, 1) of a convolution of a
    signal upsampled 2x (linear, ``align_corners=False``), at the fine voxel ``2 i + p``, reads
    ``A[p, d + 1, t + 1]`` times the coarse voxel ``i + d``. The fine voxel ``2 j + q`` is
    ``0.75 x[j] + 0.25 x[j - 1]`` (q = 0) or ``0.75 x[j] + 0.25 x[j + 1]`` (q = 1)."""
    taps = torch.zeros(2, 3, 3, dtype=torch.float64)
    for p in (0, 1):
        for t in (-1, 0, 1):
            j, q = divmod(p + t, 2)
            taps[p, j + 1, t + 1] += 0.75
            taps[p, j + (1 if q else -1) + 1, t + 1] += 0.25
    return taps


def conv_of_upsampled(conv: nn.Conv3d, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``conv(torch.cat((up(low), skip), 1))`` with ``up`` the 2x trilinear upsampling
    (``F.interpolate(size=skip.shape[2:], align_corners=False)``), for a 3x3x3 ``conv`` with
    stride 1 and zero padding 1 and ``skip`` exactly twice ``low``'s size along each axis.

    The upsampled channels are never made: each of the 8 phases of the fine grid (even/odd
    voxel per axis) of ``conv`` over them is a 3x3x3 convolution of ``low`` itself (border values
    outside, as the upsampling clamps), all 8 in one convolution at the coarse size, added into
    ``conv`` over the ``skip`` channels through a strided view. The fine grid's outermost faces,
    where the zero padding falls on upsampled values, are recomputed from 2-voxel slabs exactly
    as the plain formulation does. Same values up to float round-off, without the full-size
    upsampled tensor and concatenation (1.9-2.7 -> about 1.2 s for OBELISK's last layer at
    160x160x256 on 2 CPU cores).
    """
    n_low, out_channels = low.shape[1], conv.out_channels
    batch, coarse = low.shape[0], tuple(low.shape[2:])
    if tuple(skip.shape[2:]) != tuple(2 * n for n in coarse) or min(coarse) < 2:
        raise ValueError(f"skip {tuple(skip.shape)} must be twice low {tuple(low.shape)} (at least 2 voxels) per axis")
    layout = torch.channels_last_3d
    weight = conv.weight
    taps = _upsampling_taps().to(device=weight.device, dtype=weight.dtype)
    phase_weight = torch.einsum("ocxyz,pax,qby,rdz->pqrocabd", weight[:, :n_low], taps, taps, taps)
    phase_weight = phase_weight.reshape(8 * out_channels, n_low, 3, 3, 3).contiguous(memory_format=layout)
    padded = replicate_pad(low, (1, 1, 1, 1, 1, 1), layout)  # one copy, channels-last (F.pad would make it contiguous)
    phases = conv3d(padded, phase_weight)  # (B, 8 O, m0, m1, m2), channel (p0, p1, p2, o)
    out = conv3d(skip, weight[:, n_low:].contiguous(memory_format=layout), conv.bias, padding=1)
    out = out.contiguous(memory_format=layout)
    m0, m1, m2 = coarse
    fine = out.permute(0, 2, 3, 4, 1).view(batch, m0, 2, m1, 2, m2, 2, out_channels)
    by_phase = phases.contiguous(memory_format=layout).permute(0, 2, 3, 4, 1).reshape(batch, m0, m1, m2, 2, 2, 2, out_channels)
    fine.add_(by_phase.permute(0, 1, 4, 2, 5, 3, 6, 7))
    for dim in (2, 3, 4):  # the faces: conv's zero padding lies next to them, not upsampled values
        for first in (True, False):
            slab_low = low.narrow(dim, 0 if first else low.shape[dim] - 2, 2)
            up = F.interpolate(slab_low, size=tuple(2 * n for n in slab_low.shape[2:]), mode="trilinear", align_corners=False)
            up = up.narrow(dim, 0 if first else 2, 2)  # exact fine voxels 0, 1 or n - 2, n - 1
            slab_skip = skip.narrow(dim, 0 if first else skip.shape[dim] - 2, 2)
            exact = conv3d(torch.cat((up, slab_skip), 1), weight, conv.bias, padding=1).narrow(dim, 0 if first else 1, 1)
            out.narrow(dim, 0 if first else out.shape[dim] - 1, 1).copy_(exact)
    return out
