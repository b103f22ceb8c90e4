"""Registration methods the harness can run: VoxelOpt and the peers, behind one interface.

A method is described by a picklable :class:`MethodSpec` (a name, a kind and its settings) so
that it can be sent to a process pool or a Dask worker; :func:`run_method` turns a spec and a
pair of images into a :class:`MethodOutput`: one displacement field on the fixed grid (LPS mm,
``warped(x) = moving(x + field(x))``) and per-stage wall-clock times in seconds. The metrics
are computed afterwards from the field by :mod:`.protocols`, identically for every method.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any, Callable, Dict, List, Optional, Sequence

import SimpleITK as sitk

from ..config import RegistrationConfig
from ..errors import ConfigError

#: Kinds of method; the peers need optional packages (see :mod:`.peers`).
PEER_KINDS = ("convexadam", "ants", "elastix")
KINDS = ("voxelopt",) + PEER_KINDS


@dataclasses.dataclass
class MethodSpec:
    """A method and its settings (everything needed to reproduce a run).

    Attributes:
        name: label in the results tables (unique within a run), e.g. ``"VoxelOpt"``.
        kind: ``"voxelopt"``, ``"convexadam"``, ``"ants"`` or ``"elastix"``.
        settings: the method's parameters: a :class:`RegistrationConfig` as a dict for
            VoxelOpt; for peers the keyword arguments passed to the tool (see :mod:`.peers`).
    """

    name: str
    kind: str
    settings: Dict[str, Any]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown method kind {self.kind!r}; choose one of {', '.join(KINDS)}")


@dataclasses.dataclass
class MethodOutput:
    """What a method returns for one pair.

    Attributes:
        field: displacement field on the fixed grid (VectorFloat64, LPS mm, resampling direction).
        timings: wall-clock seconds per stage of the method (names are the method's own).
    """

    field: sitk.Image
    timings: Dict[str, float]


def voxelopt_spec(config: Optional[RegistrationConfig] = None, name: str = "VoxelOpt") -> MethodSpec:
    """The spec of a VoxelOpt run with ``config`` (default: the ``paper`` preset)."""
    config = config if config is not None else RegistrationConfig.preset("paper")
    return MethodSpec(name, "voxelopt", config.to_dict())


def peer_spec(kind: str, hu_window: Sequence[float] = (-800.0, 500.0), **overrides: Any) -> MethodSpec:
    """The spec of a peer with its default settings (:data:`.peers.DEFAULT_SETTINGS`) and overrides."""
    from .peers import DEFAULT_SETTINGS, PEER_NAMES

    if kind not in PEER_KINDS:
        raise ConfigError(f"unknown peer {kind!r}; choose from {', '.join(PEER_KINDS)}")
    settings = dict(DEFAULT_SETTINGS[kind])
    settings["hu_window"] = [float(v) for v in hu_window]
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigError(f"unknown {kind} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(settings))}")
    settings.update(overrides)
    return MethodSpec(PEER_NAMES[kind], kind, settings)


def parse_peer_list(text: str) -> List[str]:
    """``"convexadam,ants"`` -> ``["convexadam", "ants"]`` (validated, no duplicates)."""
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in PEER_KINDS]
    if bad:
        raise ConfigError(f"unknown peer(s) {', '.join(bad)}; choose from {', '.join(PEER_KINDS)}")
    return list(dict.fromkeys(names))


def run_method(spec: MethodSpec, fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """Register ``moving`` onto ``fixed`` with the method of ``spec``."""
    runner = _RUNNERS.get(spec.kind)
    if runner is None:
        from . import peers

        runner = peers.RUNNERS[spec.kind]
    return runner(spec.settings, fixed, moving)


def method_version(kind: str) -> str:
    """Version of the package that implements ``kind`` ("not installed" when absent)."""
    package = {"voxelopt": "voxelopt", "convexadam": "convexAdam", "ants": "antspyx", "elastix": "itk-elastix"}[kind]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        if kind == "voxelopt":
            from .. import __version__

            return __version__
        return "not installed"


def _run_voxelopt(settings: Dict[str, Any], fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    from ..pipeline import register

    result = register(fixed, moving, RegistrationConfig.from_dict(settings))
    return MethodOutput(result.field, dict(result.timings))


_RUNNERS: Dict[str, Callable[[Dict[str, Any], sitk.Image, sitk.Image], MethodOutput]] = {"voxelopt": _run_voxelopt}
