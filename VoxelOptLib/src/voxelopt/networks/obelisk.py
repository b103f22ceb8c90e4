"""OBELISK-hybrid TCIA abdominal CT segmentation network and its feature extractor.

The network (Heinrich, Oktay, Bouteldja, MedIA 2019; weights ``obeliskhybrid_tcia_fold{1..4}.pth``,
MIT licence) is written here from the architecture notes; its state-dict keys match the
published checkpoints so they load with strict key matching. It segments 9 labels (0 background,
1 spleen, 2 pancreas, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach,
8 duodenum) on a 144^3 grid (and, with the same weights, on any grid whose sizes are multiples of 8).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ConfigError
from ..features.base import unit_scale
from ..geometry import Grid, body_grid, check_image, crop_array, features_to_image, network_array, oriented_grid, padded_to_multiple
from .base import NetworkExtractor
from .layers import conv3d, conv_of_upsampled, lattice, obelisk_sample
from .weights import load_checkpoint, resolve_weights, strict_load

TCIA_LABELS = ("background", "spleen", "pancreas", "left kidney", "gallbladder", "esophagus",
               "liver", "stomach", "duodenum")
INPUT_SIZE = 144
_SLOPE = 0.025


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU in place (every call site passes a fresh layer output)."""
    return F.leaky_relu(t, _SLOPE, inplace=True)


def _box_mean(t: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool3d(t, 3, stride=1, padding=1)`` (zeros outside, always divided by 27) as three
    passes of 3-voxel sums: the same values up to float round-off, several times faster on the CPU."""
    p = F.pad(t, (1, 1, 1, 1, 1, 1))
    for dim in (4, 3, 2):
        n = p.shape[dim] - 2
        p = p.narrow(dim, 0, n) + p.narrow(dim, 1, n) + p.narrow(dim, 2, n)
    return p.mul_(1.0 / 27.0)


class ObeliskHybridTCIA(nn.Module):
    """OBELISK-hybrid for the TCIA 9-label task. Input (B, 1, D, H, W) scaled HU/1024 + 1, trained
    at 144^3 (see :meth:`forward` for other sizes).

    Tensor axes D, H, W are the x, y, z axes of the image oriented to ``"LAI"`` (toward
    patient left, anterior, inferior). :meth:`forward` returns the 9 logits; with
    ``return_features=True`` also the decoder maps ``d144`` (9 ch, full size), ``d72`` (12 ch,
    half size) and ``d36`` (32 ch, quarter size), named after their size at 144^3.
    """

    def __init__(self) -> None:
        super().__init__()
        self.offset1 = nn.Parameter(torch.zeros(1, 128, 1, 1, 3))
        self.offset2 = nn.Parameter(torch.zeros(1, 512, 1, 1, 3))
        for name, cin, cout, stride in (("0", 1, 4, 1), ("1", 4, 16, 2), ("11", 16, 16, 1),
                                        ("2", 16, 32, 2), ("22", 32, 32, 1), ("3", 32, 32, 1)):
            setattr(self, "conv" + name, nn.Conv3d(cin, cout, 3, stride=stride, padding=1))
            setattr(self, "batch" + name, nn.BatchNorm3d(cout))
        for branch, first_in, first_groups, last_out in (("1", 64, 2, 16), ("2", 128, 4, 32)):
            # linear<b>a maps the sampled channels (128 or 512) to 128 with grouped weights.
            groups_in = first_in * first_groups
            setattr(self, f"linear{branch}a", nn.Conv3d(groups_in, 128, 1, groups=first_groups, bias=False))
            for step, (width, nxt) in enumerate(((128, "b"), (160, "c"), (192, "d"))):
                setattr(self, f"batch{branch}{'abc'[step]}", nn.BatchNorm3d(width))
                setattr(self, f"linear{branch}{nxt}", nn.Conv3d(width, 32, 1, bias=False))
            setattr(self, f"batch{branch}d", nn.BatchNorm3d(224))
            setattr(self, f"linear{branch}e", nn.Conv3d(224, last_out, 1, bias=False))
        self.conv6bU = nn.Conv3d(64, 32, 3, padding=1)
        self.batch6bU = nn.BatchNorm3d(32)
        self.conv6U = nn.Conv3d(64, 12, 3, padding=1)
        self.batch6U = nn.BatchNorm3d(12)
        self.conv7U = nn.Conv3d(16, 9, 3, padding=1)
        self.batch7U = nn.BatchNorm3d(9)
        self.conv77U = nn.Conv3d(9, 9, 1)

    def _cbr(self, name: str, t: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, "conv" + name)
        return _lrelu(getattr(self, "batch" + name)(conv3d(t, conv.weight, conv.bias, conv.padding, conv.stride)))

    def _branch(self, b: str, volume: torch.Tensor, offsets: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        points = lattice(shape, centred=False, device=volume.device, dtype=volume.dtype)
        t = _lrelu(getattr(self, f"linear{b}a")(obelisk_sample(volume, points, offsets, shape)))
        for j, nxt in zip("abc", "bcd"):
            t = torch.cat((t, _lrelu(getattr(self, f"linear{b}{nxt}")(getattr(self, f"batch{b}{j}")(t)))), dim=1)
        return _lrelu(getattr(self, f"linear{b}e")(getattr(self, f"batch{b}d")(t)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Logits (B, 9, D, H, W) of ``x`` (B, 1, D, H, W), every size a multiple of 8.

        At 144^3 this is the published network exactly. At other sizes the lattices keep their
        density (a quarter / an eighth of the input size, as at 144) and the learned offsets are
        rescaled so that they span the same number of voxels as at 144^3: the receptive field
        stays the same in voxels, so the input should have the training voxel size.
        """
        if x.dim() != 5 or x.shape[1] != 1 or any(n % 8 or n < 16 for n in x.shape[2:]):
            raise ValueError(f"OBELISK-hybrid TCIA needs input (B, 1, D, H, W) with sizes multiples of 8 (>= 16), got {tuple(x.shape)}")
        d, h, w = x.shape[2:]
        # grid_sample's last dimension is (W, H, D); align_corners=True: index = (u + 1) (n - 1) / 2.
        rescale = torch.tensor([(INPUT_SIZE - 1.0) / (n - 1) for n in (w, h, d)], dtype=x.dtype, device=x.device)
        s1 = _box_mean(x)
        s2 = _box_mean(s1)
        e0 = self._cbr("0", x)
        e1 = self._cbr("11", self._cbr("1", e0))
        e2 = self._cbr("3", self._cbr("22", self._cbr("2", e1)))
        o1 = self._branch("1", s1, self.offset1 * rescale, (d // 4, h // 4, w // 4))
        o2 = self._branch("2", s2, self.offset2 * rescale, (d // 8, h // 4, w // 8))

        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=like.shape[2:], mode="trilinear", align_corners=False)

        d36 = _lrelu(self.batch6bU(self.conv6bU(torch.cat((e2, up(o2, e2)), 1))))
        # conv6U(cat(up(d36), up(o1), e1)) and conv7U(cat(up(d72), e0)), without the upsampled copies
        d72 = _lrelu(self.batch6U(conv_of_upsampled(self.conv6U, torch.cat((d36, o1), 1), e1)))
        d144 = _lrelu(self.batch7U(conv_of_upsampled(self.conv7U, d72, e0)))
        logits = self.conv77U(d144)
        if return_features:
            return logits, {"d144": d144, "d72": d72, "d36": d36}
        return logits


def load_obelisk(path: str, device: torch.device) -> ObeliskHybridTCIA:
    """An :class:`ObeliskHybridTCIA` in eval mode with the (already verified) weights at ``path``."""
    net = ObeliskHybridTCIA()
    strict_load(net, load_checkpoint(path), str(path))
    return net.eval().to(device)


def fold_batch_norms(net: ObeliskHybridTCIA) -> ObeliskHybridTCIA:
    """An inference copy of ``net`` with every batch norm (running statistics) folded into its
    convolution: into the preceding one for conv -> BN, into the following 1x1 one for the
    branches' BN -> 1x1 conv. Same outputs up to float round-off, fewer passes over the data."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name in ("0", "1", "11", "2", "22", "3", "6bU", "6U", "7U"):
            setattr(net, "conv" + name, fuse_conv_bn_eval(getattr(net, "conv" + name), getattr(net, "batch" + name)))
            setattr(net, "batch" + name, nn.Identity())
        for branch in "12":
            for bn_name, conv_name in zip("abcd", "bcde"):
                bn, conv = getattr(net, f"batch{branch}{bn_name}"), getattr(net, f"linear{branch}{conv_name}")
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                shift = bn.bias - bn.running_mean * scale
                fused = nn.Conv3d(conv.in_channels, conv.out_channels, 1, bias=True).to(conv.weight.device).eval()
                fused.weight.copy_(conv.weight * scale.view(1, -1, 1, 1, 1))
                fused.bias.copy_(conv.weight[:, :, 0, 0, 0] @ shift)
                setattr(net, f"linear{branch}{conv_name}", fused)
                setattr(net, f"batch{branch}{bn_name}", nn.Identity())
    return net


def in_array_order(net: ObeliskHybridTCIA) -> ObeliskHybridTCIA:
    """A copy of ``net`` for inputs whose tensor axes are (k, j, i), SimpleITK's array order of
    the network grid, instead of (i, j, k): every 3x3x3 kernel transposed and the learned
    offsets' (x, y, z) components reversed (the lattices follow the input's sizes). Its outputs
    are the original network's with the spatial axes reversed, up to float round-off; a network
    grid's array then goes in, and the outputs come back in the image's array order, without
    transposing copies."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv3d) and tuple(module.kernel_size) != (1, 1, 1):
                module.weight.data = module.weight.data.permute(0, 1, 4, 3, 2).contiguous()
        for offsets in (net.offset1, net.offset2):
            offsets.data = offsets.data.flip(-1).contiguous()
    return net


#: Feature modes of :class:`ObeliskExtractor` (see README.md, "Pretrained-network features" for the measurement).
OBELISK_MODES = ("logits", "softmax", "d144", "logits+d72")
#: Divisor of the logits. Their per-channel std on the real CT is 1.0-2.2 (MIND-SSC: about 0.36);
#: registration error on A -> Adef fell slightly from /3 to /10 and hardly beyond (README.md, "Pretrained-network features").
LOGIT_SCALE = 10.0
#: Network voxel size (mm) along the LAI x, y, z axes: the median training crop (about
#: 316 x 246 x 194 mm) resampled to 144^3 (feature_networks.md 1.2).
NETWORK_SPACING_MM = (2.2, 1.7, 1.35)
#: The body: voxels above this HU; the network runs on their bounding box widened by
#: :data:`BODY_MARGIN_MM` (context for the border voxels' receptive field).
BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_MM = 10.0


class ObeliskExtractor(NetworkExtractor):
    """OBELISK-hybrid TCIA features of an abdominal CT, on the image's own grid.

    Preprocessing (inside :meth:`extract`): resample the image (linear) onto its box oriented to
    LAI at :data:`NETWORK_SPACING_MM`; keep the body's bounding box (HU > -500, widened by
    10 mm) and pad it with air to a multiple of 8 voxels; scale ``HU / 1024 + 1``; run the
    network once on that box at its own voxel size (half precision on CUDA); resample the
    outputs back to the image's voxel grid (trilinear, nearest border value outside the box).

    Modes: ``"logits"`` (the default: 9 pre-softmax outputs divided by :data:`LOGIT_SCALE`),
    ``"softmax"`` (9 probabilities), ``"d144"`` (9 last decoder maps), ``"logits+d72"`` (logits
    and the 12 half-resolution decoder maps, each group scaled to unit mean absolute value).
    """

    name = "obelisk"
    default_weights = "obeliskhybrid_tcia_fold1.pth"

    def __init__(self, weights: Optional[str] = None, mode: str = "logits", allow_download: bool = True) -> None:
        if mode not in OBELISK_MODES:
            raise ConfigError(f"unknown OBELISK feature mode {mode!r}; choose one of {', '.join(OBELISK_MODES)}")
        self.mode = mode
        self.weights_path, self.sha256 = resolve_weights("obelisk", weights, self.default_weights, allow_download)

    def cache_key(self) -> str:
        spacing = "x".join(f"{v:g}" for v in NETWORK_SPACING_MM)
        return f"obelisk:{self.sha256[:16]}:{self.mode}:s{LOGIT_SCALE:g}:box{spacing}"

    def load(self, device: torch.device) -> ObeliskHybridTCIA:
        """The network with folded batch norms, in array order (:func:`in_array_order`), channels-last."""
        net = in_array_order(fold_batch_norms(load_obelisk(self.weights_path, device)))
        return net.to(memory_format=torch.channels_last_3d)

    def input_grid(self, image: sitk.Image, device: torch.device) -> Tuple[torch.Tensor, Grid]:
        """The network input (1, 1, n0, n1, n2) in HU and its grid (LAI, body box, padded); the
        tensor is a view of the grid's array (stored in (k, j, i) order)."""
        grid = oriented_grid(image, "LAI", NETWORK_SPACING_MM)
        whole = network_array(image, grid, device)
        box = padded_to_multiple(body_grid(whole.permute(0, 1, 4, 3, 2), grid, BODY_THRESHOLD_HU, BODY_MARGIN_MM), 8,
                                 minimum=16)  # the network's smallest input (a thin slab is padded with air)
        return crop_array(whole, grid, box).permute(0, 1, 4, 3, 2), box

    def run(self, volume: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Network outputs of an HU volume (1, 1, n0, n1, n2): ``logits``, ``d144`` (C, n0, n1, n2)
        and ``d72`` (C, n0/2, n1/2, n2/2), float32. The network runs in array order: the outputs
        are views of channels-last (C, n2, n1, n0) data, which :func:`features_to_image` reads
        without transposing."""
        device = volume.device
        x = (volume.permute(0, 1, 4, 3, 2) / 1024.0 + 1.0).contiguous(memory_format=torch.channels_last_3d)
        # half precision on CUDA only (torch 2.1 refuses a float16 CPU autocast even when it is disabled)
        half = torch.autocast("cuda", torch.float16) if device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), half:
            logits, feats = self.network(device)(x, return_features=True)
        return {name: t[0].float().permute(0, 3, 2, 1)
                for name, t in (("logits", logits), ("d144", feats["d144"]), ("d72", feats["d72"]))}

    def _channels_of(self, outputs: Dict[str, torch.Tensor]) -> List[Tuple[torch.Tensor, float]]:
        """The feature groups of :attr:`mode` on the network grid, each with the factor it is
        scaled by once on the image grid (a factor commutes with trilinear resampling; applied in
        place to the resampled copy, it needs no further full-size array)."""
        if self.mode == "logits":
            return [(outputs["logits"], 1.0 / LOGIT_SCALE)]
        if self.mode == "softmax":
            return [(torch.softmax(outputs["logits"], dim=0), 1.0)]
        if self.mode == "d144":
            return [(outputs["d144"], 1.0)]
        return [(t, unit_scale(t)) for t in (outputs["logits"], outputs["d72"])]

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        check_image(image, "the image for network features")
        volume, grid = self.input_grid(image, torch.device(device))
        maps = []
        for group, factor in self._channels_of(self.run(volume)):
            resampled = features_to_image(group, grid.with_size(group.shape[1:]), image)  # a new tensor
            maps.append(resampled if factor == 1.0 else resampled.mul_(factor))
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=0)
