"""Peer registration tools through their Python packages (optional extras), and the registry of
peers: one :class:`.methods.Peer` entry per tool in :data:`PEERS` (add one with
:func:`register_peer`).

Every peer gets identical inputs (:func:`prepare`): the fixed image and the moving image, both
already in the run's common initial alignment (:mod:`.alignment`), the moving one resampled onto
the fixed grid (linear; identity in physical space), both clipped to the HU window and scaled to
[0, 1] (the paper's preprocessing). From there each tool runs its own standard pipeline, which
may start with its own alignment: ANTs' ``SyN`` preset with a centre-of-mass start and an affine
stage, elastix with its ``affine`` map; ConvexAdam has no affine stage (each peer's ``stages``
says which, for results.md). Each returns its displacement field on the fixed grid in the
harness's convention (LPS mm, ``warped(x) = moving(x + d(x))``), so its labels are warped and
scored by the same code as VoxelOpt's (:mod:`.protocols`).

* ``convexadam``: ``convexAdam.convex_adam_MIND.convex_adam_pt`` (package ``convexAdam``) on
  numpy arrays in SimpleITK order (z, y, x); its output is a voxel displacement along the
  array axes with the same resampling convention. float32 on CPU; ``ic`` must stay True (its
  ``ic=False`` path never upsamples the coarse field).
* ``ants``: ``ants.registration`` (package ``antspyx``) with ``type_of_transform`` (default
  ``"SyN"``: affine + SyN; note that antspyx's ``"SyN"`` preset skips the finest level,
  ``reg_iterations=(40, 20, 0)``) and ``random_seed``; its forward transforms (warp and affine
  files) are composed with SimpleITK into one displacement field.
* ``elastix``: ``itk.elastix_registration_method`` (package ``itk-elastix``) with elastix's
  default ``"affine"`` and ``"bspline"`` parameter maps; the field from
  ``itk.transformix_deformation_field``. Threads are set through the environment variable
  ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (itk-elastix 0.25.4 crashes when
  ``number_of_threads`` is passed). ``itk`` loads its modules lazily, on first access of an
  attribute (about 10 s for the elastix ones): the peer lists the attributes its run uses
  (``lazy``), so that they are loaded before the clock starts.

Threads: the runner sets torch's and ITK's thread counts to the run's per-pair count before every
job; a peer's ``threads`` setting overrides it when > 0 (0, the default: the run's count). ITK
reads its count once per process, when it first runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from voxelopt.errors import ConfigError
from voxelopt.geometry import Grid, mm_field_to_image, resample_image, voxel_to_mm_field

from .methods import MethodOutput, MethodSpec, Peer
from voxelopt import voxels

#: The registry: kind -> peer (built-ins at the end of this module).
PEERS: Dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    """Add ``peer`` to :data:`PEERS` (replacing one of the same kind); returns it."""
    PEERS[peer.kind] = peer
    return peer


def get_peer(kind: str) -> Peer:
    """The registered peer ``kind``; ConfigError naming the known ones otherwise."""
    if kind not in PEERS:
        raise ConfigError(f"unknown peer {kind!r}; choose from {', '.join(PEERS)}")
    return PEERS[kind]


def peer_spec(kind: str, hu_window: Sequence[float] = (-800.0, 500.0), **overrides: Any) -> MethodSpec:
    """The spec of a peer with its default settings, ``hu_window`` and ``overrides``."""
    peer = get_peer(kind)
    settings = dict(peer.defaults)
    settings["hu_window"] = [float(v) for v in hu_window]
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ConfigError(f"unknown {kind} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(settings))}")
    settings.update(overrides)
    return MethodSpec(peer.title, kind, settings)


def parse_peer_list(text: str) -> List[str]:
    """``"convexadam,ants"`` -> ``["convexadam", "ants"]`` (validated, no duplicates)."""
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in PEERS]
    if bad:
        raise ConfigError(f"unknown peer(s) {', '.join(bad)}; choose from {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


def run_peer(spec: MethodSpec, fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """Prepare the inputs (:func:`prepare`, timed as ``preprocess``) and run the peer of ``spec``."""
    peer = get_peer(spec.kind)
    ok, reason = peer.available()
    if not ok:
        raise ConfigError(reason)
    start = time.perf_counter()
    f, m = prepare(fixed, moving, spec.settings["hu_window"])
    prepared = time.perf_counter()
    output = peer.run(spec.settings, f, m)
    return MethodOutput(output.field, {"preprocess": prepared - start, **output.timings})


def prepare(fixed: sitk.Image, moving: sitk.Image, hu_window) -> Tuple[sitk.Image, sitk.Image]:
    """Fixed and moving (resampled onto the fixed grid) clipped to ``hu_window``, scaled to [0, 1]."""
    low, high = (float(v) for v in hu_window)
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    moving = resample_image(moving, Grid.from_image(fixed), None, sitk.sitkLinear,
                            float(voxels.view(moving).min()))

    def window(image: sitk.Image) -> sitk.Image:
        scaled = (sitk.Clamp(image, sitk.sitkFloat32, low, high) - low) / (high - low)
        scaled.CopyInformation(image)
        return sitk.Cast(scaled, sitk.sitkFloat32)

    return window(fixed), window(moving)


def _stage(timings: Dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = now - start
    return now


# ---------------------------------------------------------------------------- ConvexAdam
def run_convexadam(settings: Dict[str, Any], fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """``convex_adam_pt`` on the arrays (z, y, x); its voxel field along the array axes is converted to mm."""
    from convexAdam.convex_adam_MIND import convex_adam_pt

    timings: Dict[str, float] = {}
    t = time.perf_counter()
    kwargs = {k: v for k, v in settings.items() if k not in ("hu_window", "threads")}
    threads = int(settings.get("threads", 0))
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        disp = convex_adam_pt(voxels.copy(fixed), voxels.copy(moving), dtype=torch.float32,
                              device=torch.device("cpu"), verbose=False, **kwargs)
    finally:
        torch.set_num_threads(previous)
    t = _stage(timings, "registration", t)
    # (Z, Y, X, 3) voxel displacement along the array axes == a voxelopt voxel field.
    u = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32)).permute(3, 0, 1, 2)[None]
    grid = Grid.from_image(fixed)
    field = mm_field_to_image(voxel_to_mm_field(u, grid), grid)
    _stage(timings, "field", t)
    return MethodOutput(field, timings)


def _limit_itk_threads(settings: Dict[str, Any]) -> None:
    """ITK-based peers read their thread count from the environment (itk-elastix 0.25.4 crashes
    when it is passed as an argument)."""
    threads = int(settings.get("threads", 0))
    if threads > 0:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


# ---------------------------------------------------------------------------- ANTs
def run_ants(settings: Dict[str, Any], fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """``ants.registration``; its forward transforms composed into one displacement field."""
    _limit_itk_threads(settings)
    import ants

    timings: Dict[str, float] = {}
    t = time.perf_counter()
    extra = {k: v for k, v in settings.items() if k not in ("hu_window", "threads", "type_of_transform", "random_seed")}
    with tempfile.TemporaryDirectory(prefix="voxelopt-ants-") as tmp:
        paths = [str(Path(tmp) / name) for name in ("fixed.nii.gz", "moving.nii.gz")]
        sitk.WriteImage(fixed, paths[0])
        sitk.WriteImage(moving, paths[1])
        fa, ma = ants.image_read(paths[0]), ants.image_read(paths[1])
        t = _stage(timings, "load", t)
        reg = ants.registration(fixed=fa, moving=ma, type_of_transform=settings["type_of_transform"],
                                random_seed=settings["random_seed"], outprefix=str(Path(tmp) / "reg_"), **extra)
        t = _stage(timings, "registration", t)
        field = transforms_to_field(reg["fwdtransforms"], Grid.from_image(fixed))
    _stage(timings, "field", t)
    return MethodOutput(field, timings)


def transforms_to_field(transform_files, grid: Grid) -> sitk.Image:
    """Compose ANTs/ITK transform files into one displacement field on ``grid``.

    The files are in ANTs' order (``fwdtransforms``: the last one is applied to a point
    first), which is also the order of an ITK composite transform.
    """
    composite = sitk.CompositeTransform(3)
    for path in transform_files:
        path = str(path)
        if path.endswith((".nii", ".nii.gz", ".nrrd", ".mha")):
            image = sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)
            composite.AddTransform(sitk.DisplacementFieldTransform(image))
        else:
            composite.AddTransform(sitk.ReadTransform(path))
    return sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, grid.size, grid.origin,
                                             grid.spacing, grid.direction)


# ---------------------------------------------------------------------------- elastix
def run_elastix(settings: Dict[str, Any], fixed: sitk.Image, moving: sitk.Image) -> MethodOutput:
    """``itk.elastix_registration_method`` with elastix's default maps; the field from transformix."""
    _limit_itk_threads(settings)
    import itk

    timings: Dict[str, float] = {}
    t = time.perf_counter()
    fi, mi = _to_itk(fixed, itk), _to_itk(moving, itk)
    parameters = itk.ParameterObject.New()
    for name in settings["parameter_maps"]:
        parameter_map = parameters.GetDefaultParameterMap(name)
        if settings.get("maximum_iterations"):
            parameter_map["MaximumNumberOfIterations"] = [str(int(settings["maximum_iterations"]))]
        parameters.AddParameterMap(parameter_map)
    t = _stage(timings, "load", t)
    _, result_parameters = itk.elastix_registration_method(fi, mi, parameter_object=parameters, log_to_console=False)
    t = _stage(timings, "registration", t)
    with tempfile.TemporaryDirectory(prefix="voxelopt-transformix-") as tmp:  # it writes deformationField.nii
        deformation = itk.transformix_deformation_field(mi, result_parameters, output_directory=tmp)
        array = np.asarray(itk.array_from_image(deformation), dtype=np.float64)  # (Z, Y, X, 3), x y z mm
    field = Grid.from_image(fixed).apply_to(sitk.GetImageFromArray(array, isVector=True))
    _stage(timings, "field", t)
    return MethodOutput(field, timings)


def _to_itk(image: sitk.Image, itk) -> Any:
    out = itk.image_from_array(np.ascontiguousarray(voxels.copy(image), dtype=np.float32))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)))
    return out


# ---------------------------------------------------------------------------- what each peer does
def convexadam_stages(settings: Mapping[str, Any]) -> str:
    """ConvexAdam's stages: deformable only."""
    return "deformable registration only, no affine stage (MIND features, coupled convex optimisation, then Adam)"


#: antspyx presets (``type_of_transform``) -> what they do from the given start (antspyx 0.6.3).
ANTS_PRESETS = {
    "SyN": "its own centre-of-mass start and affine stage, then SyN (deformable), both on mutual information",
    "SyNOnly": "SyN only (deformable, no affine stage)",
    "Affine": "its own centre-of-mass start and affine stage only",
    "Rigid": "its own centre-of-mass start and rigid stage only",
    "Translation": "its own centre-of-mass start and translation only",
}


def ants_stages(settings: Mapping[str, Any]) -> str:
    """ANTs' stages for its ``type_of_transform`` preset."""
    preset = settings["type_of_transform"]
    return f"antspyx preset {preset!r}: " + ANTS_PRESETS.get(preset, "see antspyx's ants.registration")


#: elastix default parameter maps -> the stage each adds.
ELASTIX_MAPS = {"translation": "a translation", "rigid": "a rigid stage", "affine": "its own affine stage",
                "bspline": "a B-spline deformable stage"}


def elastix_stages(settings: Mapping[str, Any]) -> str:
    """elastix's stages: its parameter maps in turn."""
    return ", then ".join(f"{ELASTIX_MAPS.get(name, 'a stage')} (map {name!r})" for name in settings["parameter_maps"])


# ---------------------------------------------------------------------------- the built-in peers
# convexAdam 0.2.0 package defaults (MIND r=1 d=2, grid_sp 6, disp_hw 4, lambda 1.25, 80 Adam
# iterations at grid_sp_adam 2, inverse consistency on).
register_peer(Peer("convexadam", "ConvexAdam", "convexAdam", "convexAdam.convex_adam_MIND", "convex_adam_pt",
                   {"mind_r": 1, "mind_d": 2, "lambda_weight": 1.25, "grid_sp": 6, "disp_hw": 4, "selected_niter": 80,
                    "selected_smooth": 0, "grid_sp_adam": 2, "ic": True, "threads": 0}, run_convexadam,
                   stages=convexadam_stages))
register_peer(Peer("ants", "ANTs SyN", "antspyx", "ants", "registration",
                   {"type_of_transform": "SyN", "random_seed": 1, "threads": 0}, run_ants, stages=ants_stages))
# elastix's default "affine" then "bspline" maps; maximum_iterations None keeps their iterations.
# lazy: what run_elastix and _to_itk use from itk (PyBuffer: the numpy bridge of image_from_array
# and array_from_image), each loaded on first access.
register_peer(Peer("elastix", "elastix B-spline", "itk-elastix", "itk", "elastix_registration_method",
                   {"parameter_maps": ["affine", "bspline"], "maximum_iterations": None, "threads": 0}, run_elastix,
                   lazy=("ParameterObject", "transformix_deformation_field", "image_from_array", "array_from_image",
                         "matrix_from_array", "PyBuffer"),
                   stages=elastix_stages))
