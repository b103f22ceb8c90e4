"""OBELISK-hybrid TCIA abdominal CT segmentation network and its feature extractor.

The network (Heinrich, Oktay, Bouteldja, MedIA 2019; weights ``obeliskhybrid_tcia_fold{1..4}.pth``,
MIT licence) is written here from the architecture notes; its state-dict keys match the
published checkpoints so they load with strict key matching. It segments 9 labels (0 background,
1 spleen, 2 pancreas, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver, 7 stomach,
8 duodenum) on a 144^3 grid.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .base import NetworkExtractor
from . import geometry
from .layers import lattice, obelisk_sample
from .weights import load_checkpoint, resolve_weights, strict_load

TCIA_LABELS = ("background", "spleen", "pancreas", "left kidney", "gallbladder", "esophagus",
               "liver", "stomach", "duodenum")
INPUT_SIZE = 144
_SLOPE = 0.025


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, _SLOPE)


class ObeliskHybridTCIA(nn.Module):
    """OBELISK-hybrid for the TCIA 9-label task. Input (B, 1, 144, 144, 144) scaled HU/1024 + 1.

    Tensor axes D, H, W are the x, y, z axes of the image oriented to ``"LAI"`` (toward
    patient left, anterior, inferior). :meth:`forward` returns the 9 logits; with
    ``return_features=True`` also the decoder maps ``d144`` (9 ch, 144^3), ``d72`` (12 ch, 72^3)
    and ``d36`` (32 ch, 36^3).
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
        return _lrelu(getattr(self, "batch" + name)(getattr(self, "conv" + name)(t)))

    def _branch(self, b: str, volume: torch.Tensor, offsets: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        points = lattice(shape, centred=False, device=volume.device, dtype=volume.dtype)
        t = _lrelu(getattr(self, f"linear{b}a")(obelisk_sample(volume, points, offsets, shape)))
        for j, nxt in zip("abc", "bcd"):
            t = torch.cat((t, _lrelu(getattr(self, f"linear{b}{nxt}")(getattr(self, f"batch{b}{j}")(t)))), dim=1)
        return _lrelu(getattr(self, f"linear{b}e")(getattr(self, f"batch{b}d")(t)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dim() != 5 or tuple(x.shape[1:]) != (1, INPUT_SIZE, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"OBELISK-hybrid TCIA needs input (B, 1, 144, 144, 144), got {tuple(x.shape)}")
        s1 = F.avg_pool3d(x, 3, stride=1, padding=1)
        s2 = F.avg_pool3d(s1, 3, stride=1, padding=1)
        e0 = self._cbr("0", x)
        e1 = self._cbr("11", self._cbr("1", e0))
        e2 = self._cbr("3", self._cbr("22", self._cbr("2", e1)))
        o1 = self._branch("1", s1, self.offset1, (36, 36, 36))
        o2 = self._branch("2", s2, self.offset2, (18, 36, 18))

        def up(t: torch.Tensor, size: int) -> torch.Tensor:
            return F.interpolate(t, size=(size, size, size), mode="trilinear", align_corners=False)

        d36 = _lrelu(self.batch6bU(self.conv6bU(torch.cat((e2, up(o2, 36)), 1))))
        d72 = _lrelu(self.batch6U(self.conv6U(torch.cat((up(d36, 72), up(o1, 72), e1), 1))))
        d144 = _lrelu(self.batch7U(self.conv7U(torch.cat((up(d72, INPUT_SIZE), e0), 1))))
        logits = self.conv77U(d144)
        if return_features:
            return logits, {"d144": d144, "d72": d72, "d36": d36}
        return logits


def load_obelisk(path: str, device: torch.device) -> ObeliskHybridTCIA:
    """An :class:`ObeliskHybridTCIA` in eval mode with the (already verified) weights at ``path``."""
    net = ObeliskHybridTCIA()
    strict_load(net, load_checkpoint(path), str(path))
    return net.eval().to(device)


#: Feature modes of :class:`ObeliskExtractor` (see README.md, "Pretrained-network features" for the measurement).
OBELISK_MODES = ("logits", "softmax", "d144", "logits+d72")
#: Divisor of the logits. Their per-channel std on the real CT is 1.0-2.2 (MIND-SSC: about 0.36);
#: registration error on A -> Adef fell slightly from /3 to /10 and hardly beyond (README.md, "Pretrained-network features").
LOGIT_SCALE = 10.0


class ObeliskExtractor(NetworkExtractor):
    """OBELISK-hybrid TCIA features of an abdominal CT, on the image's own grid.

    Preprocessing (inside :meth:`extract`): orient to LAI; split the craniocaudal extent into
    windows of at most ``window_mm`` (overlapping by about a third, logits blended with
    linear ramps); crop each window in-plane to the body (HU > -500); resize to 144^3
    (trilinear); scale ``HU / 1024 + 1``; run the network; resample the outputs back to the
    image's voxel grid (trilinear, nearest border value outside the body box).

    Modes: ``"logits"`` (the default: 9 pre-softmax outputs divided by :data:`LOGIT_SCALE`),
    ``"softmax"`` (9 probabilities), ``"d144"`` (9 last decoder maps), ``"logits+d72"`` (logits
    and the 12 72^3 decoder maps, each group scaled to unit mean absolute value).
    """

    name = "obelisk"
    default_weights = "obeliskhybrid_tcia_fold1.pth"

    def __init__(self, weights: Optional[str] = None, mode: str = "logits", window_mm: float = 180.0,
                 allow_download: bool = True) -> None:
        if mode not in OBELISK_MODES:
            raise ConfigError(f"unknown OBELISK feature mode {mode!r}; choose one of {', '.join(OBELISK_MODES)}")
        if not (isinstance(window_mm, (int, float)) and math.isfinite(window_mm) and window_mm > 0):
            raise ConfigError(f"window_mm must be > 0 mm, got {window_mm!r}")
        self.mode = mode
        self.window_mm = float(window_mm)
        self.weights_path, self.sha256 = resolve_weights("obelisk", weights, self.default_weights, allow_download)

    def cache_key(self) -> str:
        return f"obelisk:{self.sha256[:16]}:{self.mode}:s{LOGIT_SCALE:g}:w{self.window_mm:g}"

    def load(self, device: torch.device) -> ObeliskHybridTCIA:
        return load_obelisk(self.weights_path, device)

    @property
    def channels(self) -> int:
        return 21 if self.mode == "logits+d72" else 9

    def windows(self, oriented: sitk.Image) -> List[Tuple[int, int]]:
        """(start, length) of the craniocaudal windows along the LAI z axis."""
        nz = oriented.GetSize()[2]
        length = max(1, min(nz, int(round(self.window_mm / oriented.GetSpacing()[2]))))
        if length >= nz:
            return [(0, nz)]
        count = int(math.ceil((nz - length) / (length * 2.0 / 3.0))) + 1
        starts = np.round(np.linspace(0, nz - length, count)).astype(int)
        return [(int(s), length) for s in starts]

    def run_window(self, volume: torch.Tensor, start: Sequence[int], size: Sequence[int],
                   device: torch.device) -> Dict[str, torch.Tensor]:
        """Network outputs for a crop of the LAI (x, y, z) HU tensor; each (C, n, n, n)."""
        crop = volume[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
        x = F.interpolate(crop[None, None], size=(INPUT_SIZE,) * 3, mode="trilinear", align_corners=False)
        x = x / 1024.0 + 1.0
        with torch.no_grad():
            logits, feats = self.network(device)(x, return_features=True)
        return {"logits": logits[0], "d144": feats["d144"][0], "d72": feats["d72"][0]}

    def _channels_of(self, outputs: Dict[str, torch.Tensor]) -> List[Tuple[torch.Tensor, int]]:
        if self.mode == "logits":
            return [(outputs["logits"] / LOGIT_SCALE, INPUT_SIZE)]
        if self.mode == "softmax":
            return [(torch.softmax(outputs["logits"], dim=0), INPUT_SIZE)]
        if self.mode == "d144":
            return [(outputs["d144"], INPUT_SIZE)]
        logits = outputs["logits"]
        d72 = outputs["d72"]
        return [(logits / logits.abs().mean().clamp_min(1e-6), INPUT_SIZE),
                (d72 / d72.abs().mean().clamp_min(1e-6), 72)]

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        geometry.check_image(image)
        device = torch.device(device)
        oriented = geometry.orient(sitk.Cast(image, sitk.sitkFloat32), "LAI")
        volume = geometry.to_xyz_tensor(oriented, device)
        parent = geometry.xyz_grid_spec(oriented)
        size_x, size_y, size_z = image.GetSize()
        out = torch.zeros((self.channels, size_z, size_y, size_x), dtype=torch.float32, device=device)
        windows = self.windows(oriented)
        blend = len(windows) > 1
        weight_sum = torch.zeros((size_z, size_y, size_x), dtype=torch.float32, device=device) if blend else None
        nz = oriented.GetSize()[2]
        for z0, length in windows:
            start, size = self._body_box(volume, z0, length)
            outputs = self.run_window(volume, start, size, device)
            weight_fn = _ramp_weight(z0 == 0, z0 + length == nz) if blend else None
            first = 0
            for maps, n in self._channels_of(outputs):
                grid = geometry.resized_grid(parent, start, size, (n, n, n))
                geometry.resample_to_image(maps, grid, image, out=out[first:first + maps.shape[0]],
                                           weight_fn=None if weight_fn is None else weight_fn(n),
                                           weight_sum=weight_sum if first == 0 else None)
                first += maps.shape[0]
            del outputs
        if weight_sum is not None:
            out.div_(weight_sum.clamp_min_(1e-12))
        return out

    @staticmethod
    def _body_box(volume: torch.Tensor, z0: int, length: int) -> Tuple[Tuple[int, int, int], Tuple[int, int, int]]:
        """In-plane bounding box of HU > -500 in the slab; the whole plane when there is no body."""
        body = volume[:, :, z0:z0 + length] > -500.0
        if not bool(body.any()):
            return (0, 0, z0), (volume.shape[0], volume.shape[1], length)
        xs = torch.nonzero(body.any(dim=2).any(dim=1)).flatten()
        ys = torch.nonzero(body.any(dim=2).any(dim=0)).flatten()
        start = (int(xs[0]), int(ys[0]), z0)
        return start, (int(xs[-1]) - start[0] + 1, int(ys[-1]) - start[1] + 1, length)


def _ramp_weight(at_start: bool, at_end: bool):
    """Window blending weight along the window's craniocaudal grid axis (a2), per grid size n.

    The weight rises linearly over the outer quarter of the window, except at an end of the
    image (no other window covers it there).
    """

    def for_size(n: int):
        ramp = n / 4.0

        def weight(a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
            lo = torch.full_like(a2, float("inf")) if at_start else a2 + 0.5
            hi = torch.full_like(a2, float("inf")) if at_end else (n - 0.5) - a2
            return (torch.minimum(lo, hi) / ramp).clamp(0.0, 1.0)

        return weight

    return for_size
