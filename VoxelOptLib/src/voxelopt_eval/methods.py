"""What the harness runs: a method spec, a method's output, and the description of a peer tool.

A method is described by a picklable :class:`MethodSpec` (a name, a kind and its settings) so
that it can be sent to a process pool or a Dask worker. Kind ``"voxelopt"`` is this library;
every other kind is a :class:`Peer` of the registry in :mod:`.peers`. Every method returns a
:class:`MethodOutput`: one displacement field on the fixed grid (LPS mm,
``warped(x) = moving(x + field(x))``) and per-stage wall-clock times in seconds. The metrics
are computed afterwards from the field by :mod:`.protocols`, identically for every method.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import SimpleITK as sitk

from voxelopt.config import RegistrationConfig

VOXELOPT = "voxelopt"


@dataclasses.dataclass
class MethodSpec:
    """A method and its settings (everything needed to reproduce a run).

    Attributes:
        name: label in the results tables (unique within a run), e.g. ``"VoxelOpt"``.
        kind: ``"voxelopt"`` or the kind of a registered peer (``"convexadam"``, ...).
        settings: the method's parameters: a :class:`RegistrationConfig` as a dict for
            VoxelOpt; for a peer the keyword arguments of its run function (see :mod:`.peers`).
    """

    name: str
    kind: str
    settings: Dict[str, Any]


@dataclasses.dataclass
class MethodOutput:
    """What a method returns for one pair.

    Attributes:
        field: displacement field on the fixed grid (VectorFloat64, LPS mm, resampling direction).
        timings: wall-clock seconds per stage of the method (names are the method's own).
    """

    field: sitk.Image
    timings: Dict[str, float]


#: A peer's run function: (settings, fixed, moving) -> output, on prepared inputs (:func:`.peers.prepare`).
PeerRun = Callable[[Dict[str, Any], sitk.Image, sitk.Image], MethodOutput]


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer registration tool: everything the harness needs to know about it.

    Attributes:
        kind: its key (``--peers`` name), lower case.
        title: its name in the results tables.
        package: the distribution whose version is reported (``importlib.metadata``).
        module, entry_point: it is usable when ``module`` imports and has ``entry_point``.
        defaults: its settings (the keyword arguments of ``run``), as written in results.md;
            the harness adds ``hu_window``.
        run: registers prepared inputs (both on the fixed grid, intensities windowed to [0, 1],
            moving already in the common initial alignment) and returns the field.
    """

    kind: str
    title: str
    package: str
    module: str
    entry_point: str
    defaults: Mapping[str, Any]
    run: PeerRun

    def available(self) -> Tuple[bool, str]:
        """(True, "") when the tool can run here, else (False, the reason)."""
        try:
            getattr(importlib.import_module(self.module), self.entry_point)
        except Exception as error:  # ImportError, AttributeError, or a broken install raising something else
            return False, f"{self.kind} is not usable ({type(error).__name__}: {error}); install the 'peers' extra"
        return True, ""

    def version(self) -> str:
        """The installed version of :attr:`package`, or ``"not installed"``."""
        return _distribution_version(self.package) or "not installed"


def voxelopt_spec(config: Optional[RegistrationConfig] = None, name: str = "VoxelOpt") -> MethodSpec:
    """The spec of a VoxelOpt run with ``config`` (default: the ``paper`` preset)."""
    config = config if config is not None else RegistrationConfig.preset("paper")
    return MethodSpec(name, VOXELOPT, config.to_dict())


def voxelopt_version() -> str:
    """The installed voxelopt version (the package's own when not installed as a distribution)."""
    from voxelopt import __version__

    return _distribution_version("voxelopt") or __version__


def run_voxelopt(settings: Dict[str, Any], fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """VoxelOpt on the raw images with the configuration ``settings`` (a RegistrationConfig dict)."""
    from voxelopt.pipeline import register

    result = register(fixed, moving, RegistrationConfig.from_dict(settings))
    return MethodOutput(result.field_image("fixed"), dict(result.timings))


def _distribution_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
