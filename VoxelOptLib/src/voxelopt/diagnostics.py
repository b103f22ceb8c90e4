"""The paper's entropy diagnostic (its Fig. 1): which features carry displacement information.

For a pair and each feature type, the cost volume of the pair after its initial alignment only
(``config.init``; no deformable registration) on the working grid
(the finest pyramid level) gives a displacement entropy per voxel (nats, between 0 and ln L for
L = (2k+1)^3 offsets). Features that single out displacements give low entropies; features that
do not give entropies near ln L. Statistics are over the fixed image's foreground (voxels above
-500 HU), as numbers and as a PNG of the distributions.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from .config import RegistrationConfig
from .device import resolve_device
from .features import make_extractor
from .geometry import image_to_tensor, resample_image, resize_volume
from .io import ImageLike, PathLike
from .errors import InputWarning
from .inputs import input_warnings, prepare
from .stages import working_features
from .solver import cost_volume, displacement_entropy, label_offsets

FOREGROUND_HU = -500.0
BINS = 40


def entropy_distributions(fixed: ImageLike, moving: ImageLike, feature_types: Sequence[str],
                          config: RegistrationConfig) -> Dict[str, Dict[str, object]]:
    """Entropy statistics per feature type (keys: the names in ``feature_types``).

    Each entry holds ``mean``, ``median``, ``p10``, ``p90`` (nats), ``max_entropy`` (ln L),
    ``relative_mean`` (mean / ln L), the histogram (``bin_edges``, ``density``) and
    ``voxels`` (foreground voxels counted).
    """
    device = resolve_device(config.device)
    # grids and alignment do not depend on the features; one level: only the working grid is used,
    # so an image too small for the preset's pyramid can still be measured
    prepared = prepare(fixed, moving, config.replace(levels=1))
    for note in input_warnings(prepared.fixed, prepared.moving, config.hu_window):  # as register() warns
        warnings.warn(note, InputWarning, stacklevel=2)
    offsets = label_offsets(config.search_radius(finest=True), device)  # the working grid is the finest level
    top = math.log(offsets.shape[0])
    on_grid = resample_image(prepared.fixed, prepared.feature_grid)
    fixed_hu = resize_volume(image_to_tensor(on_grid, torch.device("cpu")), prepared.working_grid.shape)
    mask = fixed_hu[0, 0].numpy() > FOREGROUND_HU
    if not mask.any():
        mask = np.ones_like(mask)
    results: Dict[str, Dict[str, object]] = {}
    for name in feature_types:
        extractor = make_extractor(config.replace(features=name))
        fixed_features = working_features(prepared, "fixed", extractor, device, padding_mask=config.padding_mask)
        moving_features = working_features(prepared, "moving", extractor, device, padding_mask=config.padding_mask)
        entropy = displacement_entropy(cost_volume(moving_features, fixed_features, offsets), config.beta).cpu().numpy()
        values = entropy[mask]
        density, edges = np.histogram(values, bins=BINS, range=(0.0, top), density=True)
        results[name] = {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10)),
            "p90": float(np.percentile(values, 90)),
            "max_entropy": top,
            "relative_mean": float(values.mean() / top),
            "voxels": int(values.size),
            "bin_edges": [float(v) for v in edges],
            "density": [float(v) for v in density],
        }
    return results


def plot_entropy_distributions(results: Dict[str, Dict[str, object]], path: PathLike) -> Path:
    """A PNG with one density curve per feature type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, stats in results.items():
        edges = np.asarray(stats["bin_edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        ax.plot(centres, stats["density"], label=f"{name} (mean {stats['mean']:.2f})")
    top = next(iter(results.values()))["max_entropy"] if results else 1.0
    ax.axvline(top, color="gray", linestyle=":", label="ln L (no information)")
    ax.set_xlabel("displacement entropy (nats)")
    ax.set_ylabel("density over foreground voxels")
    ax.set_title("Displacement entropy by feature type (before deformable registration)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def feature_list(text: str) -> List[str]:
    """``"raw,mind,mind+obelisk"`` -> ``["raw", "mind", "mind+obelisk"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]
