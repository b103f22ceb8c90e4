"""What the harness runs: a method spec, a method's output, and the description of a peer tool.

A method is described by a picklable :class:`MethodSpec` (a name, a kind and its settings) so
that it can be sent to a process pool or a Dask worker. Kind ``"voxelopt"`` is this library;
every other kind is a :class:`Peer` of the registry in :mod:`.peers`. Every method returns a
:class:`MethodOutput`: one displacement field on the fixed grid (LPS mm,
``warped(x) = moving(x + field(x))``) and per-stage wall-clock times in seconds. The metrics
are computed afterwards from the field by :mod:`.protocols`, identically for every method.

Before a method is timed its package is imported (:func:`load_voxelopt`, :meth:`Peer.load`), so
that its times are its work only, never the import of its package.

Threads: the runner sets torch's and ITK's thread counts to the run's per-pair count before every
job; a peer's own ``threads`` setting (> 0) overrides it for that peer (:func:`threads_used`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import SimpleITK as sitk

from voxelopt.config import RegistrationConfig

VOXELOPT = "voxelopt"

#: The engine's modules that :func:`voxelopt.pipeline.register` imports only on first use (once its
#: inputs are checked; the network feature extractors when one is made): :func:`load_voxelopt`
#: imports them before the clock starts.
VOXELOPT_MODULES: Tuple[str, ...] = (
    "voxelopt.pipeline", "voxelopt.affine", "voxelopt.device", "voxelopt.features", "voxelopt.peak_memory",
    "voxelopt.solver", "voxelopt.stages", "voxelopt.networks.obelisk", "voxelopt.networks.pdd",
    "voxelopt.networks.universal", "voxelopt.networks.torchscript",
)


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
#: What a peer does from the common initial alignment, given its settings: a phrase for results.md.
PeerStages = Callable[[Mapping[str, Any]], str]


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
        lazy: further attributes of ``module`` that ``run`` uses (directly or through the
            package's own helpers) and that the package loads only on first access, as ``itk``
            does; :meth:`load` touches them.
        stages: what the tool does from the common initial alignment with given settings (a
            phrase for results.md, e.g. "its own affine stage, then B-spline"); None: not stated.
    """

    kind: str
    title: str
    package: str
    module: str
    entry_point: str
    defaults: Mapping[str, Any]
    run: PeerRun
    lazy: Tuple[str, ...] = ()
    stages: Optional[PeerStages] = None

    def load(self) -> None:
        """Import :attr:`module` and touch :attr:`entry_point` and :attr:`lazy`, so that a timed
        ``run`` measures registration only, not the import of the package. Instant once done
        (Python keeps the loaded modules for the process). Raises what the import raises."""
        module = importlib.import_module(self.module)
        for name in (self.entry_point,) + tuple(self.lazy):
            getattr(module, name)

    def available(self) -> Tuple[bool, str]:
        """(True, "") when the tool can run here, else (False, the reason); loads it (:meth:`load`)."""
        try:
            self.load()
        except Exception as error:  # ImportError, AttributeError, or a broken install raising something else
            return False, f"{self.kind} is not usable ({type(error).__name__}: {error}); install the 'peers' extra"
        return True, ""

    def describe_stages(self, settings: Mapping[str, Any]) -> str:
        """What the tool does from the common initial alignment with ``settings`` (:attr:`stages`)."""
        return self.stages(settings) if self.stages is not None else "its own registration (stages not stated)"

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


def load_voxelopt() -> None:
    """Import the engine's modules (:data:`VOXELOPT_MODULES`) and load its compiled kernels where
    they can run (:func:`voxelopt.compiled.preload`), so that a timed VoxelOpt run measures
    registration only; instant once done."""
    from voxelopt import compiled

    for name in VOXELOPT_MODULES:
        importlib.import_module(name)
    compiled.preload()


def voxelopt_stages(settings: Mapping[str, Any]) -> str:
    """What VoxelOpt does from the common initial alignment with the configuration ``settings``."""
    init = settings.get("init", "none")
    if init == "none":
        return "its deformable registration only (no affine stage: init 'none')"
    if init == "affine":
        return "its own affine stage (init 'affine'), then its deformable registration"
    return f"its own initial alignment (init {init!r}), then its deformable registration"


def threads_used(settings: Mapping[str, Any], run_threads: int) -> int:
    """The torch/ITK threads a method uses per pair: its own ``threads`` setting when > 0 (peers),
    else the run's per-pair count ``run_threads``; 0 means the libraries' defaults."""
    own = int(settings.get("threads") or 0)
    return own if own > 0 else max(0, int(run_threads or 0))


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
