"""PyTorch for the registration: detection without importing, installation only on request.

Rules (Slicer's Python FAQ on dependencies): never install at import or module start-up, always
ask the user first, prefer the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA or CPU wheel
for the machine), and fall back to a plain ``pip install torch`` that the user confirms.
The ``voxelopt`` engine itself ships inside the extension, so only torch is missing on a fresh
Slicer (numpy, SimpleITK and scipy come with Slicer).
"""

import importlib.util
from typing import Callable, Optional

from .errors import MissingDependencyError

TORCH_REQUIREMENT = "torch>=1.12"

TORCH_MISSING_MESSAGE = (
    "VoxelOpt needs PyTorch, which is not installed in this Slicer. Click Apply in the VoxelOpt "
    "Registration module to install it (you will be asked to confirm), or install it with the "
    "'PyTorch Utils' module of the PyTorch extension, then run again."
)


def torch_installed() -> bool:
    """True when ``import torch`` would find a package (torch itself is not imported)."""
    return importlib.util.find_spec("torch") is not None


def require_torch() -> None:
    """Raise :class:`MissingDependencyError` with instructions when torch is not installed."""
    if not torch_installed():
        raise MissingDependencyError(TORCH_MISSING_MESSAGE)


def install_torch(confirm: Callable[[str], bool], log: Optional[Callable[[str], None]] = None) -> bool:
    """Install torch inside desktop Slicer, after the user's confirmation. Returns True when torch is usable.

    Uses ``PyTorchUtils.PyTorchUtilsLogic().installTorch`` (PyTorch extension, which asks its own
    confirmation and chooses a CUDA/CPU build) when that module is present; otherwise asks
    ``confirm(message)`` and runs ``pip install torch`` through ``slicer.packaging.pip_install``
    (Slicer >= 5.11) or ``slicer.util.pip_install``. Never called at import time.
    """
    if torch_installed():
        return True
    log = log or (lambda message: None)
    try:
        import PyTorchUtils  # the PyTorch extension's module, present when that extension is installed
    except ImportError:
        PyTorchUtils = None
    if PyTorchUtils is not None:
        log("Installing PyTorch with the PyTorch Utils module...")
        torch_module = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=">=1.12")
        return torch_module is not None
    if not confirm(
        "VoxelOpt needs PyTorch, which is not installed. The PyTorch extension (PyTorch Utils module) "
        "is not installed either.\n\nInstall the CPU/GPU build that pip chooses now (about 1-3 GB download)? "
        "For a specific CUDA build, cancel and install the PyTorch extension instead."
    ):
        return False
    import slicer

    packaging = getattr(slicer, "packaging", None)
    pip_install = getattr(packaging, "pip_install", None) if packaging is not None else None
    if pip_install is None:
        pip_install = slicer.util.pip_install
    log("Installing PyTorch with pip...")
    pip_install(TORCH_REQUIREMENT)
    importlib.invalidate_caches()
    return torch_installed()


def describe_device(name: str) -> str:
    """Which device a registration with ``device=name`` would use, e.g. "CPU (2 threads)" or "CUDA: <gpu>".

    Without torch, says so instead of failing (torch is imported here, not at module import).
    """
    if not torch_installed():
        return "PyTorch not installed"
    try:
        import voxelopt

        return voxelopt.describe_device(name)
    except Exception as error:  # an unusable device name or a broken torch install: show why
        return f"unavailable ({error})"
