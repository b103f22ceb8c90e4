"""The CLIP-Driven Universal Model's U-Net backbone with its 8-channel ``precls_conv`` head.

These are the features of the VoxelOpt paper ("foundation" features). The module names and
shapes match the published checkpoint ``clip_driven_universal_unet.pth`` (a dict whose ``'net'``
entry is a ``module.``-prefixed state dict) so the backbone and head load strictly; the other
parts of the Universal Model (text embeddings, controller, GAP) are ignored. The checkpoint
is not distributed with voxelopt (its repository's licence is CC BY-NC-ND 4.0): the user must
point to it with ``--weights PATH``.

Inference behaviour reproduced from the original: every batch norm normalises with the mean
and biased variance *of the current volume* (never the running statistics), so features
depend on the whole volume and the network must see it in one pass. For large volumes
:meth:`UniversalUNet.forward_low_memory` computes exactly that whole-volume result with z-slab
convolutions and two-pass statistics, so a 512x512x300 CT at 2 mm fits in well under 8 GB.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import check_image, features_to_image, network_volume, oriented_grid, padded_to_multiple, window_hu
from .base import NetworkExtractor
from .layers import conv3d
from .weights import WeightsError, load_checkpoint, resolve_weights, strict_load

BN_EPS = 1e-5
GN_GROUPS = 16
#: Preprocessing used by VoxelOpt: clip HU to this window and scale to [0, 1].
UNIVERSAL_HU_WINDOW = (-500.0, 800.0)
UNIVERSAL_SPACING_MM = 2.0
#: The Universal Model was trained on RAS-oriented volumes (MONAI ``Orientationd("RAS")``).
UNIVERSAL_ORIENTATION = "RAS"
#: Voxel count above which the exact low-memory forward is used.
LOW_MEMORY_VOXELS = 96 * 96 * 96
#: Low-memory path: input channels per convolution call, and the target size (elements) of a
#: convolution's work buffer (channels x 27 x output voxels of a slab).
CHANNEL_CHUNK = 64
WORKSPACE_ELEMENTS = 24 * 1024 * 1024


def batch_stat_norm(x: torch.Tensor, bn: nn.BatchNorm3d) -> torch.Tensor:
    """Batch norm with the statistics of ``x`` itself (training-mode normalisation, no buffer update)."""
    return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, momentum=0.0, eps=BN_EPS)


class LUConv(nn.Module):
    """3^3 convolution -> batch-statistics batch norm -> ReLU (keys ``conv1``, ``bn1``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(batch_stat_norm(self.conv1(x), self.bn1))


class DownStage(nn.Module):
    """Two LUConvs (``ops.0``, ``ops.1``)."""

    def __init__(self, in_channels: int, mid: int, out_channels: int) -> None:
        super().__init__()
        self.ops = nn.Sequential(LUConv(in_channels, mid), LUConv(mid, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops(x)


class UpStage(nn.Module):
    """Transposed conv k2 s2 (``up_conv``), concat (up, skip), two LUConvs (``ops.0``, ``ops.1``)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, 2, stride=2)
        self.ops = nn.Sequential(LUConv(in_channels + skip_channels, out_channels), LUConv(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class UniversalUNet(nn.Module):
    """U-Net backbone + ``precls_conv`` head. Input (1, 1, D, H, W), sizes divisible by 8.

    Output: (1, 8, D, H, W) pre-activation features (signed, unbounded). Run one volume at a
    time: the batch-statistics normalisation would mix volumes of a batch.
    """

    def __init__(self) -> None:
        super().__init__()
        self.down_tr64 = DownStage(1, 32, 64)
        self.down_tr128 = DownStage(64, 64, 128)
        self.down_tr256 = DownStage(128, 128, 256)
        self.down_tr512 = DownStage(256, 256, 512)
        self.up_tr256 = UpStage(512, 256, 256)
        self.up_tr128 = UpStage(256, 128, 128)
        self.up_tr64 = UpStage(128, 64, 64)
        self.precls_conv = nn.Sequential(nn.GroupNorm(GN_GROUPS, 64, eps=1e-5), nn.ReLU(), nn.Conv3d(64, 8, 1))

    @staticmethod
    def _check(x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[:2] != (1, 1) or any(n % 8 for n in x.shape[2:]):
            raise ValueError(f"the Universal U-Net needs input (1, 1, D, H, W) with sizes divisible by 8, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        s64 = self.down_tr64(x)
        s128 = self.down_tr128(F.max_pool3d(s64, 2))
        s256 = self.down_tr256(F.max_pool3d(s128, 2))
        b512 = self.down_tr512(F.max_pool3d(s256, 2))
        d = self.up_tr256(b512, s256)
        d = self.up_tr128(d, s128)
        d = self.up_tr64(d, s64)
        return self.precls_conv(d)

    # ------------------------------------------------------------------ exact low-memory path
    def forward_low_memory(self, x: torch.Tensor, slab: int = 16) -> torch.Tensor:
        """The same result as :meth:`forward` (up to float round-off) with bounded memory.

        Convolutions run on z-slabs of ``slab`` output planes (with a one-plane halo); each
        batch norm accumulates per-channel sums over the slabs first (float64) and then
        normalises the stored activation in place; concatenations and the full-resolution
        transposed convolution are never materialised whole.
        """
        self._check(x)
        with torch.no_grad():
            skips = [self._stage(self.down_tr64, [x], slab)]
            for stage in (self.down_tr128, self.down_tr256):
                skips.append(self._stage(stage, [F.max_pool3d(skips[-1], 2)], slab))
            d = self._stage(self.down_tr512, [F.max_pool3d(skips[-1], 2)], slab)
            for stage in (self.up_tr256, self.up_tr128, self.up_tr64):
                # The skip (popped: no other reference) and the low-resolution input are
                # released as soon as the stage's first convolution has used them.
                t = _luconv_slabs(stage.ops[0], [_Upsampled(stage.up_conv, d), skips.pop()], slab)
                d = None
                d = _luconv_slabs(stage.ops[1], [t], slab)
                del t
            return self._head(d, slab)

    def _stage(self, stage: DownStage, inputs: List, slab: int) -> torch.Tensor:
        t = _luconv_slabs(stage.ops[0], inputs, slab)
        return _luconv_slabs(stage.ops[1], [t], slab)

    def _head(self, d: torch.Tensor, slab: int) -> torch.Tensor:
        gn, conv = self.precls_conv[0], self.precls_conv[2]
        channels = d.shape[1]
        per_group = channels // GN_GROUPS
        total = torch.zeros(GN_GROUPS, dtype=torch.float64, device=d.device)
        total_sq = torch.zeros_like(total)
        for z0 in range(0, d.shape[2], slab):
            part = d[:, :, z0:z0 + slab].double().reshape(GN_GROUPS, -1)
            total += part.sum(dim=1)
            total_sq += (part * part).sum(dim=1)
        count = d[0, :per_group].numel()
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        scale_g = 1.0 / torch.sqrt(var + gn.eps)
        scale = (scale_g.repeat_interleave(per_group) * gn.weight.double()).float()
        shift = (gn.bias.double() - mean.repeat_interleave(per_group) * scale_g.repeat_interleave(per_group) * gn.weight.double()).float()
        out = torch.empty((1, conv.out_channels) + tuple(d.shape[2:]), dtype=d.dtype, device=d.device)
        for z0 in range(0, d.shape[2], slab):
            part = F.relu(d[:, :, z0:z0 + slab] * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1))
            out[:, :, z0:z0 + slab] = conv(part)
        return out


class _Upsampled:
    """Lazily computed ``up_conv(low)`` (k2 s2: output plane z depends on input plane z // 2)."""

    def __init__(self, up_conv: nn.ConvTranspose3d, low: torch.Tensor) -> None:
        self.up_conv = up_conv
        self.low = low
        self.shape = (low.shape[0], up_conv.out_channels, 2 * low.shape[2], 2 * low.shape[3], 2 * low.shape[4])

    def planes(self, z0: int, z1: int) -> torch.Tensor:
        lo, hi = z0 // 2, (z1 + 1) // 2
        up = self.up_conv(self.low[:, :, lo:hi])
        return up[:, :, z0 - 2 * lo:z1 - 2 * lo]


def _planes(t, z0: int, z1: int) -> torch.Tensor:
    return t.planes(z0, z1) if isinstance(t, _Upsampled) else t[:, :, z0:z1]


def _luconv_slabs(unit: LUConv, inputs: Sequence, slab: int) -> torch.Tensor:
    """``unit`` applied to the channel concatenation of ``inputs``, slab by slab, exactly.

    The convolution over the concatenation is the sum of convolutions over channel chunks of
    at most :data:`CHANNEL_CHUNK` channels, and the number of planes per slab is chosen so that
    the convolution's work buffer (about channels x 27 x slab voxels) stays near
    :data:`WORKSPACE_ELEMENTS`. The slabs are thin (one output plane at full resolution), which
    PyTorch's heuristic sends to its slow reference kernel: they go through :func:`conv3d`
    (oneDNN on the CPU): 36-38 -> 25-27 s for a 48x160x192 input on 2 cores.
    """
    conv, bn = unit.conv1, unit.bn1
    depth, height, width = inputs[0].shape[2:]
    widths = [t.shape[1] for t in inputs]
    chunk = min(CHANNEL_CHUNK, max(widths))
    planes = max(1, min(slab, WORKSPACE_ELEMENTS // (chunk * 27 * height * width)))
    out = torch.empty((1, conv.out_channels, depth, height, width), dtype=torch.float32, device=conv.weight.device)
    total = torch.zeros(conv.out_channels, dtype=torch.float64, device=out.device)
    total_sq = torch.zeros_like(total)
    for z0 in range(0, depth, planes):
        z1 = min(depth, z0 + planes)
        lo, hi = max(0, z0 - 1), min(depth, z1 + 1)
        pad = (0, 0, 0, 0, 1 if z0 == 0 else 0, 1 if z1 == depth else 0)
        res = None
        first = 0
        for t in inputs:
            block = _planes(t, lo, hi)
            for c0 in range(0, block.shape[1], chunk):
                c1 = min(block.shape[1], c0 + chunk)
                part = conv3d(F.pad(block[:, c0:c1], pad), conv.weight[:, first + c0:first + c1], None, padding=(0, 1, 1))
                res = part if res is None else res.add_(part)
            first += block.shape[1]
            del block
        res.add_(conv.bias.view(1, -1, 1, 1, 1))
        out[:, :, z0:z1] = res
        r = res.double()
        total += r.sum(dim=(0, 2, 3, 4))
        total_sq += (r * r).sum(dim=(0, 2, 3, 4))
    count = depth * height * width
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    scale = (bn.weight.double() / torch.sqrt(var + bn.eps))
    shift = (bn.bias.double() - mean * scale).float().view(1, -1, 1, 1, 1)
    scale = scale.float().view(1, -1, 1, 1, 1)
    for z0 in range(0, depth, planes):
        view = out[:, :, z0:z0 + planes]
        view.mul_(scale).add_(shift).clamp_(min=0.0)
    return out


def universal_state_dict(checkpoint: Mapping, source: str) -> Dict[str, torch.Tensor]:
    """The backbone + ``precls_conv`` entries of a Universal Model checkpoint, renamed for :class:`UniversalUNet`.

    Accepts the published format (``{'net': {'module.backbone.…': …}}``) and plain state dicts
    with or without the ``module.`` prefix or the ``backbone.`` level.
    """
    state = checkpoint.get("net", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{source} does not contain a state dict")
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith("backbone."):
            out[name[len("backbone."):]] = value
        elif name.startswith("precls_conv.") or name.split(".", 1)[0] in ("down_tr64", "down_tr128", "down_tr256",
                                                                          "down_tr512", "up_tr256", "up_tr128", "up_tr64"):
            out[name] = value
    if not out:
        raise WeightsError(f"{source} has no Universal Model backbone or precls_conv keys")
    return out


def load_universal(path: str, device: torch.device) -> UniversalUNet:
    """A :class:`UniversalUNet` with the backbone and head of the checkpoint at ``path``."""
    net = UniversalUNet()
    strict_load(net, universal_state_dict(load_checkpoint(path), str(path)), str(path))
    return net.eval().to(device)


class UniversalExtractor(NetworkExtractor):
    """The paper's 8-channel Universal-Model features on the image's own grid.

    Preprocessing as VoxelOpt: clip HU to [-500, 800] and scale to [0, 1]; 2 mm isotropic
    (VoxelOpt's grid; the image's box is kept); orientation RAS (the Universal Model's training
    orientation); pad each axis with air to a multiple of 8; one whole-volume pass (exact low-memory path above
    :data:`LOW_MEMORY_VOXELS`); features resampled back to the image grid, unnormalised.
    """

    name = "universal"

    def __init__(self, weights: Optional[str] = None, slab: int = 16) -> None:
        self.weights_path, self.sha256 = resolve_weights("universal", weights, None, allow_download=False)
        self.slab = int(slab)

    def cache_key(self) -> str:
        return f"universal:{self.sha256[:16]}"

    def load(self, device: torch.device) -> UniversalUNet:
        return load_universal(self.weights_path, device)

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        check_image(image, "the image for network features")
        device = torch.device(device)
        grid = padded_to_multiple(oriented_grid(image, UNIVERSAL_ORIENTATION, UNIVERSAL_SPACING_MM), 8)
        x = window_hu(network_volume(image, grid, device), UNIVERSAL_HU_WINDOW)
        net = self.network(device)
        with torch.inference_mode():
            if x.numel() > LOW_MEMORY_VOXELS:
                feats = net.forward_low_memory(x, self.slab)[0]
            else:
                feats = net(x)[0]
        return features_to_image(feats, grid, image)
