"""Network weights for the module: a VoxelOpt folder in Slicer's cache, downloads only when allowed.

Typing a network name ("obelisk", "pdd", "mind+obelisk") in Features must not download files
behind the user's back. So the bridge gives the engine a *directory* as ``config.weights`` (the
engine never downloads then, see ``voxelopt.networks.weights.weights_available``), checks before
a run which published checkpoints are missing there, and downloads them into it only when the
caller allows it (the GUI asks the user first).
"""

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import slicer

from .errors import WeightsDownloadRequired


def default_directory() -> str:
    """``<Slicer's cache folder>/VoxelOpt`` in Slicer; without ``slicer.app`` (headless
    slicer-core) the engine's own cache folder (``$VOXELOPT_WEIGHTS_DIR`` or ``~/.cache/voxelopt``)."""
    cache_path = getattr(getattr(slicer, "app", None), "cachePath", None)
    if cache_path:
        return os.path.join(cache_path, "VoxelOpt")
    from voxelopt.networks.weights import cache_dir

    return str(cache_dir())


def network_names(config) -> List[str]:
    """The pretrained-network feature types of a configuration (e.g. ["obelisk"] for "mind+obelisk")."""
    from voxelopt.config import NON_NETWORK_FEATURES

    return [name.strip() for name in config.features.split("+") if name.strip() not in NON_NETWORK_FEATURES]


def with_weights_directory(config, directory: str):
    """``config`` reading network weights from ``directory`` (unchanged without network features or
    when ``config.weights`` is already set, e.g. by a batch script)."""
    if config.weights is not None or not network_names(config):
        return config
    return config.replace(weights=str(directory))


def missing_downloads(config) -> list:
    """The published checkpoints (``voxelopt.networks.weights.WeightsInfo``) that the networks of
    ``config`` need and that are not in the directory ``config.weights``; never downloads.

    Networks without a published file (universal, torchscript) are left to the engine, which
    says that they need a weights file.
    """
    names = network_names(config)
    if not names or config.weights is None or os.path.isfile(config.weights):
        return []  # a file given by a batch script: the engine checks it
    from voxelopt.networks.weights import default_weights, weights_available

    missing = []
    for name in names:
        info = default_weights(name)
        if info is not None and info.url is not None and not weights_available(name, config.weights):
            missing.append(info)
    return missing


def check_downloads(config, allow: bool) -> list:
    """:func:`missing_downloads`; raises :class:`WeightsDownloadRequired` when there are some and
    ``allow`` is False (nothing is downloaded, nothing written)."""
    missing = missing_downloads(config)
    if missing and not allow:
        raise WeightsDownloadRequired([info.filename for info in missing], [info.url for info in missing], str(config.weights))
    return missing


def download(files: Sequence, directory: str, progress: Optional[Callable[[float, str], None]] = None) -> None:
    """Download ``files`` (``WeightsInfo``) into ``directory``, each verified by its SHA-256."""
    from voxelopt.networks.weights import download as download_file

    for info in files:
        if progress is not None:
            progress(0.0, f"Downloading network weights {info.filename}")
        download_file(info.url, Path(directory) / info.filename, info.sha256)
