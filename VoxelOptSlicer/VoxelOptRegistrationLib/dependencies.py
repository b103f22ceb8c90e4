"""PyTorch for the registration: detection without importing, installation only on request.

Rules (Slicer's Python FAQ on dependencies): never install at import or module start-up, always
ask the user first, prefer the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA or CPU wheel
for the machine), and fall back to a plain ``pip install torch`` that the user confirms.
The ``voxelopt`` engine itself ships inside the extension, so only torch is missing on a fresh
Slicer (numpy, SimpleITK and scipy come with Slicer).
"""

import importlib.metadata
import importlib.util
import re
import sys
from typing import Callable, Optional, Tuple

from voxelopt import MINIMUM_TORCH_VERSION

from .errors import MissingDependencyError

TORCH_REQUIREMENT = f"torch>={MINIMUM_TORCH_VERSION}"
#: torch builds older than this were compiled against NumPy 1 and fail under NumPy 2.
NUMPY2_MINIMUM_TORCH_VERSION = "2.3"

TORCH_MISSING_MESSAGE = (
    "VoxelOpt needs PyTorch, which is not installed in this Slicer. Click Apply in the VoxelOpt "
    "Registration module to install it (you will be asked to confirm), or install it with the "
    "'PyTorch Utils' module of the PyTorch extension, then run again."
)


def torch_installed() -> bool:
    """True when ``import torch`` would find a package (torch itself is not imported)."""
    return importlib.util.find_spec("torch") is not None


def _version(text: str) -> Tuple[int, int]:
    """(major, minor) of a version string such as "2.13.0+cpu" ((0, 0) when unreadable)."""
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_problem() -> Optional[str]:
    """Why the installed torch cannot run the engine (None: it can). Reads package metadata only."""
    if not torch_installed():
        return TORCH_MISSING_MESSAGE
    torch_version = _installed_version("torch")
    if torch_version is None:
        return None  # a torch without package metadata (e.g. built from source): nothing to check
    if _version(torch_version) < _version(MINIMUM_TORCH_VERSION):
        return (f"VoxelOpt needs PyTorch {MINIMUM_TORCH_VERSION} or newer; this Slicer has PyTorch {torch_version}. "
                "Update it with the 'PyTorch Utils' module of the PyTorch extension.")
    numpy_version = _installed_version("numpy") or "0"
    if _version(numpy_version) >= (2, 0) and _version(torch_version) < _version(NUMPY2_MINIMUM_TORCH_VERSION):
        return (f"PyTorch {torch_version} was built for NumPy 1 and does not work with the NumPy {numpy_version} of "
                f"this Slicer. Install PyTorch {NUMPY2_MINIMUM_TORCH_VERSION} or newer with the 'PyTorch Utils' module "
                "of the PyTorch extension.")
    return None


def require_torch() -> None:
    """Raise :class:`MissingDependencyError` with instructions when torch is missing or unusable."""
    problem = torch_problem()
    if problem is not None:
        raise MissingDependencyError(problem)


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
        torch_module = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
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
    """Which device a registration with ``device=name`` would use, e.g. "CPU (2 threads)" or "CUDA 0: <gpu>".

    Never imports torch (opening the module must stay fast): until a registration has imported
    it, says which torch is installed and that the device is chosen at the first run.
    """
    problem = torch_problem()
    if problem is not None:
        return "PyTorch not installed" if not torch_installed() else "PyTorch unusable (see Apply)"
    if sys.modules.get("torch") is None:
        return f"{name}: chosen at the first registration (PyTorch {_installed_version('torch') or 'installed'})"
    try:
        import voxelopt

        return voxelopt.describe_device(name)
    except Exception as error:  # an unusable device name or a broken torch install: show why
        return f"unavailable ({error})"
