"""Locating, downloading, verifying and safely loading network weights.

Where weights come from, in order:

1. the path the user gives (``RegistrationConfig.weights`` / ``--weights PATH``). A file is used
   as is; a directory is searched for the network's default file name (directly or one level
   down, so ``--weights ../shared/models`` works);
2. the cache directory: ``$VOXELOPT_WEIGHTS_DIR`` if set, else ``~/.cache/voxelopt``;
3. a download into the cache directory, only for files with a public URL (OBELISK and PDD-Net,
   pinned to an upstream commit). Without network access this fails with a message that says
   where to put the file by hand.

For a network with published checksums (:data:`KNOWN_WEIGHTS`: OBELISK, PDD-Net) every file is
verified before it is loaded; an unknown file is refused unless
``VOXELOPT_ALLOW_UNVERIFIED_WEIGHTS=1`` (for fine-tuned copies you trust). Networks without a
published checksum (the Universal Model, user TorchScript files) are accepted by checksum and
checked by structure (strict key/shape matching). Any file that is a known checkpoint of a
*different* network is refused.
Checkpoints are read with ``torch.load(weights_only=True)``: no arbitrary Python object is ever
unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import torch

from ..digest import file_digest
from ..errors import InputError

ENV_WEIGHTS_DIR = "VOXELOPT_WEIGHTS_DIR"
ENV_ALLOW_UNVERIFIED = "VOXELOPT_ALLOW_UNVERIFIED_WEIGHTS"
DEFAULT_CACHE_DIR = Path("~/.cache/voxelopt")


class WeightsError(InputError):
    """A weights file is missing, cannot be downloaded, fails its checksum or has the wrong content."""


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """A published checkpoint: its file name, SHA-256, network family and (optional) public URL."""

    filename: str
    sha256: str
    network: str
    url: Optional[str] = None


_OBELISK_BASE = "https://raw.githubusercontent.com/mattiaspaul/OBELISK/b80daf8f84748b7e12d3c6a20336a3dbf4c11bca/models/"
_PDD_BASE = "https://raw.githubusercontent.com/multimodallearning/pdd_net/8573113d044ec6e3c20b7acd6977404613c10a8f/"

#: Checkpoints whose SHA-256 is known (docs/feature_networks.md of the project's shared notes).
KNOWN_WEIGHTS: Dict[str, WeightsInfo] = {
    info.filename: info
    for info in (
        WeightsInfo("obeliskhybrid_tcia_fold1.pth", "4337240affcf636fd8d7fddd10c86a0cb3877cabb6111d8bb1a0f9e0333212b6", "obelisk", _OBELISK_BASE + "obeliskhybrid_tcia_fold1.pth"),
        WeightsInfo("obeliskhybrid_tcia_fold2.pth", "09532504051ff75e6413004c4d6e6acab2e688ce18fc1d27d6c51b8bcf70c386", "obelisk", _OBELISK_BASE + "obeliskhybrid_tcia_fold2.pth"),
        WeightsInfo("obeliskhybrid_visceral_fold1.pth", "ced73dadf996c9df2f2e6ed51b82d071c189e8ccae28f9cbc83fd6bd8dd8a31a", "obelisk-visceral"),
        WeightsInfo("obelisk_visceral_fold1.pth", "edf6ba7ce4b24377187912d7009b33a5c07e4e8697d851bdb8dd38613e328d76", "obelisk-visceral-binary"),
        WeightsInfo("dense_reg_mind2_feat_epoch2999.pth", "edbeb707c320464eea1dd4926b51bd9c57b4cb60832fe5b011b0f5f8b031d04b", "pdd", _PDD_BASE + "dense_reg_mind2_feat_epoch2999.pth"),
        WeightsInfo("dense_reg_feat_v01.pth", "8b7dec64617b9e53fbf2e0ee5b197ad8ef301c8403fd78a58e05431944a38d29", "pdd", _PDD_BASE + "dense_reg_feat_v01.pth"),
    )
}


def cache_dir() -> Path:
    """The weights cache directory: ``$VOXELOPT_WEIGHTS_DIR`` or ``~/.cache/voxelopt``."""
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_digest(path, hashlib.sha256())


def _known_by_hash(digest: str) -> Optional[WeightsInfo]:
    for info in KNOWN_WEIGHTS.values():
        if info.sha256 == digest:
            return info
    return None


def verify_weights(path: Path, network: str, expected: Optional[WeightsInfo] = None) -> str:
    """Check a weights file's SHA-256 and return it.

    Args:
        path: the file.
        network: the network family the caller wants (``"obelisk"``, ``"pdd"``, ...).
        expected: the specific checkpoint expected, if any (its checksum must match exactly).

    Raises:
        WeightsError: the file is a known checkpoint of another network, does not match the
            expected checksum, or is unknown and unverified loading was not allowed.
    """
    digest = sha256_of(path)
    known = _known_by_hash(digest)
    if known is not None and known.network == network and (expected is None or known.sha256 == expected.sha256):
        return digest
    if known is not None:
        raise WeightsError(
            f"{path} is the checkpoint {known.filename} of the {known.network!r} network, not a {network!r} checkpoint"
            + (f" ({expected.filename})" if expected is not None else "")
        )
    if expected is not None:
        raise WeightsError(
            f"checksum mismatch for {path}: SHA-256 {digest}, expected {expected.sha256} ({expected.filename}); "
            "the file is corrupt, truncated or tampered with: delete it and download it again"
        )
    if os.environ.get(ENV_ALLOW_UNVERIFIED, "") == "1" or not any(i.network == network for i in KNOWN_WEIGHTS.values()):
        # No published checksum for this network (Universal Model, TorchScript): the caller
        # checks the structure (strict keys and shapes) instead.
        return digest
    raise WeightsError(
        f"{path} (SHA-256 {digest}) is not a known {network!r} checkpoint; known files: "
        + ", ".join(i.filename for i in KNOWN_WEIGHTS.values() if i.network == network)
        + f". If it is a fine-tuned copy you trust, set {ENV_ALLOW_UNVERIFIED}=1 to load it unverified"
    )


def _search_dir(directory: Path, filename: str) -> Optional[Path]:
    direct = directory / filename
    if direct.is_file():
        return direct
    for child in sorted(directory.iterdir()) if directory.is_dir() else []:
        candidate = child / filename
        if child.is_dir() and candidate.is_file():
            return candidate
    return None


def download(url: str, target: Path, expected_sha256: str, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``target`` atomically, verifying its SHA-256.

    Raises:
        WeightsError: no network / HTTP error (the message says where to put the file by hand),
            or the downloaded bytes do not have the expected checksum (nothing is kept).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=str(target.parent))
    tmp = Path(tmp_name)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise WeightsError(
                f"could not download {url} ({exc}). Without internet access, download the file "
                f"elsewhere and put it at {target} (or set {ENV_WEIGHTS_DIR}, or pass --weights PATH)"
            ) from exc
        digest = sha256_of(tmp)
        if digest != expected_sha256:
            raise WeightsError(
                f"downloaded {url} but its SHA-256 is {digest}, expected {expected_sha256}; the file was discarded"
            )
        os.replace(tmp, target)
        return target
    finally:
        if tmp.exists():
            tmp.unlink()


def resolve_weights(network: str, user_path: Optional[str], default_filename: Optional[str],
                    allow_download: bool = True) -> Tuple[Path, str]:
    """Find (and if needed download) the weights of ``network`` and verify them.

    Args:
        network: network family (key of :data:`KNOWN_WEIGHTS` entries' ``network``).
        user_path: the user's ``--weights`` path (file or directory), or None.
        default_filename: file name looked for in a user directory and the cache directory;
            None when the network has no default file (the user must give a path).
        allow_download: try the public URL of ``default_filename`` when it is not cached.

    Returns:
        (path, sha256) of the verified file.
    """
    expected = KNOWN_WEIGHTS.get(default_filename) if default_filename else None
    if user_path is not None:
        path = Path(user_path).expanduser()
        if path.is_dir():
            if default_filename is None:
                raise WeightsError(f"--weights {path} is a directory; the {network!r} network needs the path of its weights file")
            found = _search_dir(path, default_filename)
            if found is None:
                raise WeightsError(f"no {default_filename} in {path} (nor in its subdirectories)")
            path = found
        elif not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        # A user file may be any known checkpoint of this network (e.g. another fold).
        return path, verify_weights(path, network, None if path.name != default_filename else expected)
    if default_filename is None:
        raise WeightsError(f"the {network!r} features need a weights file: pass --weights PATH (config.weights)")
    directory = cache_dir()
    found = _search_dir(directory, default_filename)
    if found is not None:
        return found, verify_weights(found, network, expected)
    if not allow_download or expected is None or expected.url is None:
        raise WeightsError(
            f"weights {default_filename} for {network!r} not found in {directory} (set {ENV_WEIGHTS_DIR} or pass --weights PATH)"
        )
    path = download(expected.url, directory / default_filename, expected.sha256)
    return path, expected.sha256


def default_weights(network: str) -> Optional[WeightsInfo]:
    """The published checkpoint feature network ``network`` ("obelisk", "pdd") loads when no weights
    are given (its extractor's ``default_weights``); None for networks without one ("universal",
    "torchscript": ``config.weights`` is required) and for names that are not networks."""
    from .obelisk import ObeliskExtractor
    from .pdd import PDDExtractor

    extractor = {cls.name: cls for cls in (ObeliskExtractor, PDDExtractor)}.get(network)
    return KNOWN_WEIGHTS[extractor.default_weights] if extractor is not None else None


def weights_available(network: str, weights: Optional[str] = None) -> bool:
    """True when feature network ``network`` finds verified weights *without downloading*: in
    ``weights`` (a file, or a directory holding the default file, as ``RegistrationConfig.weights``)
    or else in :func:`cache_dir`. False when they are missing (a registration with ``weights=None``
    would download them, one with a directory would fail), unverifiable, or the network needs a
    file that was not given. Never downloads; reads (and hashes) the file when it exists.

    Passing a directory as ``RegistrationConfig.weights`` is the way to forbid downloads: the
    engine downloads only into :func:`cache_dir`, and only when ``weights`` is None.
    """
    info = default_weights(network)
    try:
        resolve_weights(network, weights, info.filename if info is not None else None, allow_download=False)
    except WeightsError:
        return False
    return True


def load_checkpoint(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU, with a clear error for non-checkpoints."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, truncated files...
        raise WeightsError(
            f"{path} is not a weights-only PyTorch checkpoint (tensors and plain containers); "
            f"refusing to load it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


def strict_load(module: torch.nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing missing/unexpected/mis-shaped keys."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} does not contain a state dict of tensors")
    own = module.state_dict()
    missing = sorted(set(own) - set(state) - {k for k in own if k.endswith("num_batches_tracked")})
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append("missing keys " + _short(missing))
        if unexpected:
            parts.append("unexpected keys " + _short(unexpected))
        if shapes:
            parts.append("wrong shapes " + _short(f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in shapes))
        raise WeightsError(f"{source} does not fit {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(dict(state), strict=True)


def _short(items: Iterable[str], limit: int = 6) -> str:
    items = list(items)
    text = ", ".join(items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")
