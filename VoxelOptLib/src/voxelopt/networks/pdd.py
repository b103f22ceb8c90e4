"""PDD-Net OBELISK feature extractor (Heinrich, MICCAI 2019; Apache-2.0 weights).

Two published checkpoints: ``dense_reg_mind2_feat_epoch2999.pth`` (hidden width 96, centre
lattice; trained on the Learn2Reg abdomen grid, 2 mm; the default) and ``dense_reg_feat_v01.pth``
(width 48 with a grouped first 1x1 layer, corner lattice). Both give 24 channels on a lattice of
about one third of the input resolution. The class is written from the architecture notes;
its state-dict keys match the checkpoints (strict loading).
"""

from __future__ import annotations

from typing import Optional, Tuple

import SimpleITK as sitk
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import check_image, features_to_image, network_volume, oriented_grid, padded_to_multiple
from .base import NetworkExtractor
from .layers import deformable_samples, lattice, linear_of_samples
from .weights import WeightsError, load_checkpoint, resolve_weights, strict_load

#: Input spacing of the PDD networks (mm).
PDD_SPACING_MM = 2.0
#: Orientation the input is permuted to before the network (an assumption: the training
#: arrays' orientation could not be checked; see README.md, "Pretrained-network features").
PDD_ORIENTATION = "RAS"
#: Divisor applied to the 24 output channels (mind2 per-channel std on real CT is 1.0-1.5).
PDD_SCALE = 4.0


class PDDFeatureNet(nn.Module):
    """PDD-Net feature extractor. Input (B, 1, H, W, D) scaled ``HU / 500`` at 2 mm.

    Args:
        hidden: width of the hidden layers (96 for mind2, 48 for v01).
        groups: groups of the first 1x1 layer (1 for mind2, 4 for v01).
        centred: True for mind2's centre lattice, False for v01's corner lattice.

    Output: (B, 24, H//3, W//3, D//3).
    """

    def __init__(self, hidden: int = 96, groups: int = 1, centred: bool = True) -> None:
        super().__init__()
        self.centred = centred
        self.offsets = nn.Parameter(torch.zeros(2, 48, 3))
        self.layer0 = nn.Conv3d(1, 4, 5, stride=2, padding=2, bias=False)
        self.batch0 = nn.BatchNorm3d(4)
        self.layer1 = nn.Conv3d(192, hidden, 1, groups=groups, bias=False)
        self.batch1 = nn.BatchNorm3d(hidden)
        self.layer2 = nn.Conv3d(hidden, hidden, 3, padding=1, bias=False)
        self.batch2 = nn.BatchNorm3d(hidden)
        self.layer3 = nn.Conv3d(hidden, 24, 1)

    @staticmethod
    def output_shape(input_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
        """Lattice size for an input of spatial size ``input_shape``."""
        return tuple(max(1, n // 3) for n in input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1 or min(x.shape[2:]) < 3:
            raise ValueError(f"PDD-Net needs input (B, 1, H, W, D) with every size >= 3, got {tuple(x.shape)}")
        shape = self.output_shape(tuple(x.shape[2:]))
        t = F.avg_pool3d(x, 3, stride=2, padding=1)
        t = F.relu(self.batch0(self.layer0(t)))
        points = lattice(shape, centred=self.centred, device=x.device, dtype=x.dtype)
        # layer1(plus - minus) with plus and minus the samples at the two offset sets (channel
        # c*48 + k: input channel c, offset k), from one sampling of both sets, without
        # reordering the samples into channels (linear_of_samples)
        both = deformable_samples(t, points, self.offsets.view(1, 96, 1, 1, 3))  # (B, 4, N, 96)
        h = F.relu(self.batch1(linear_of_samples(both[..., :48] - both[..., 48:], self.layer1, shape)))
        h = F.relu(self.batch2(self.layer2(h)))
        return self.layer3(h)


def load_pdd(path: str, device: torch.device) -> PDDFeatureNet:
    """A :class:`PDDFeatureNet` (variant chosen from the checkpoint's shapes) in eval mode."""
    state = load_checkpoint(path)
    w1 = state.get("layer1.weight") if hasattr(state, "get") else None
    if not isinstance(w1, torch.Tensor) or w1.dim() != 5:
        raise WeightsError(f"{path} is not a PDD-Net feature checkpoint (no layer1.weight)")
    if tuple(w1.shape[:2]) == (96, 192):
        net = PDDFeatureNet(96, 1, centred=True)
    elif tuple(w1.shape[:2]) == (48, 48):
        net = PDDFeatureNet(48, 4, centred=False)
    else:
        raise WeightsError(f"{path}: layer1.weight has shape {tuple(w1.shape)}, which fits neither PDD-Net variant")
    strict_load(net, state, str(path))
    return net.eval().to(device)


class PDDExtractor(NetworkExtractor):
    """PDD-Net features on the image's own grid.

    Preprocessing: resample linearly onto the image's box oriented to RAS at about 2 mm (box kept), scale ``HU / 500``, run
    the network, divide the 24 outputs by :data:`PDD_SCALE` and resample them trilinearly from
    the network lattice (whose exact voxel positions are known) back to the image grid.
    """

    name = "pdd"
    default_weights = "dense_reg_mind2_feat_epoch2999.pth"

    def __init__(self, weights: Optional[str] = None, allow_download: bool = True) -> None:
        self.weights_path, self.sha256 = resolve_weights("pdd", weights, self.default_weights, allow_download)

    def cache_key(self) -> str:
        return f"pdd:{self.sha256[:16]}:s{PDD_SCALE:g}"

    def load(self, device: torch.device) -> PDDFeatureNet:
        return load_pdd(self.weights_path, device)

    def extract(self, image: sitk.Image, device: torch.device) -> torch.Tensor:
        check_image(image, "the image for network features")
        device = torch.device(device)
        # at least 8 voxels per axis (a thin slab padded with air): the output lattice, a quarter
        # of the input, then has 2 points or more along every axis
        grid = padded_to_multiple(oriented_grid(image, PDD_ORIENTATION, PDD_SPACING_MM), 1, minimum=8)
        volume = network_volume(image, grid, device)
        net = self.network(device)
        with torch.inference_mode():
            feats = net(volume / 500.0)[0] / PDD_SCALE
        quarter = [((n + 1) // 2 + 1) // 2 for n in volume.shape[2:]]
        lattice_shape = feats.shape[1:]
        origin, step = [], []
        for m, n in zip(quarter, lattice_shape):
            if net.centred:
                origin.append(2.0 * (m - 1) / n)
                step.append(4.0 * (m - 1) / n)
            else:
                origin.append(0.0)
                step.append(4.0 * (m - 1) / max(n - 1, 1))
        return features_to_image(feats, grid.lattice(origin, step, lattice_shape), image)
