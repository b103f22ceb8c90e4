"""The typed registration configuration, its validation and its named presets.

All parameters of the method live in one frozen dataclass, :class:`RegistrationConfig`.
They fall in two groups, which matters for caching (see :mod:`voxelopt.cache`):

* *feature parameters* (``features``, ``hu_window``, ``mind_radius``, ``mind_dilation``,
  ``feature_spacing``, ``working_scale``, ``init``, ``weights``): changing one of them means the
  features must be recomputed;
* *solver parameters* (everything else): a change re-runs only the optimisation.

Units: spacings in millimetres; ``k``, ``sigma_range`` and ``fixed_sigma`` in voxels of the
pyramid level being solved; ``thetas`` are the paper's coupling parameters (the energy weight
of the coupling term is ``1 / (2 * theta)``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from .errors import ConfigError

FEATURE_PARAMETERS = (
    "features",
    "hu_window",
    "mind_radius",
    "mind_dilation",
    "feature_spacing",
    "working_scale",
    "init",
    "weights",
)

INIT_MODES = ("none", "centers", "com")
SIGMA_MODES = ("code", "paper")
MAX_LEVELS = 7
MAX_K = 3


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Every parameter of a VoxelOpt registration.

    Attributes:
        features: feature type: ``"raw"`` (windowed intensity), ``"mind"`` (MIND-SSC), a
            pretrained network name, or several joined with ``"+"`` (e.g. ``"mind+obelisk"``).
        hu_window: (low, high) intensity window in HU; intensities are clipped to it and
            scaled to [0, 1] before any feature is computed. The paper's window is (-800, 500).
        mind_radius: MIND-SSC patch radius in voxels of the feature grid (box of 2r+1).
        mind_dilation: MIND-SSC neighbour distance in voxels of the feature grid.
        weights: path of network weights for network features (None: the default location).
        feature_spacing: isotropic spacing (mm) of the grid on which features are computed;
            the fixed image's extent and direction are kept. None keeps the fixed image's grid.
        working_scale: the solver's finest level is the feature grid scaled by this factor
            (the paper solves at 0.5 of its 2 mm grid, i.e. 4 mm voxels).
        levels: number of pyramid levels (1-7); each level halves every axis that stays >= 4.
        k: search radius in voxels; (2k+1)^3 integer offsets per voxel and level.
        beta: softmax sharpness of the displacement entropy.
        sigma_mode: ``"code"`` (official code: min-max normalised entropy, log2, mapped to
            ``sigma_range``) or ``"paper"`` (sigma = alpha * ln(E / max E + 1)).
        alpha: blurring strength cap of the paper's sigma form (voxels).
        sigma_range: (low, high) sigma in voxels of the official code's form.
        adaptive: voxel-adaptive message passing; False uses ``fixed_sigma`` everywhere
            (the paper's ablation).
        fixed_sigma: sigma (voxels) of the non-adaptive filter.
        filter_cost: pre-filter the cost volume with the message passing (paper: on).
        smoothing_passes: how many times each filtering applies the 3-tap separable filter.
        thetas: coupling schedule of the coordinate descent (paper: 150, 50, 15, 5, 1.5, 0.5).
        ss_steps: scaling-and-squaring steps per level (0 = add the residual, no integration).
        refine_iterations: Gauss-Newton steps of the optional continuous refinement of the final
            field (0 = off, the paper's method; see :mod:`voxelopt.solver.refine`).
        refine_weight: damping of the refinement's steps relative to the features' mean
            curvature (dimensionless; larger = smaller, smoother steps).
        refine_scale: the refinement runs on the working grid scaled by this factor (same box);
            1 = the working grid itself (finest); 0.5 meets about 2 s on 2 CPU cores for a
            192x160x256 pair (``benchmarks/refinement.py``) at some accuracy.
        padding_mask: leave each image's unscanned voxels out of the cost (outside its grid, and
            border slabs of its minimum value padding a thin scan; see :mod:`voxelopt.masks`).
        search_fraction: caps each level's search radius along an axis at this fraction of the
            fixed image's scanned extent along it (level voxels), so thin or partial fields of
            view are not searched beyond their own size; 0 = no cap (only ``k``).
        init: initial alignment: ``"none"``, ``"centers"`` (image centres) or ``"com"``
            (intensity centres of mass).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    features: str = "mind"
    hu_window: Tuple[float, float] = (-800.0, 500.0)
    mind_radius: int = 2
    mind_dilation: int = 2
    weights: Optional[str] = None
    feature_spacing: Optional[float] = 2.0
    working_scale: float = 0.5
    levels: int = 5
    k: int = 1
    beta: float = 10.0
    sigma_mode: str = "paper"
    alpha: float = 1.5
    sigma_range: Tuple[float, float] = (0.1, 0.5)
    adaptive: bool = True
    fixed_sigma: float = 0.5
    filter_cost: bool = True
    smoothing_passes: int = 3
    thetas: Tuple[float, ...] = (150.0, 50.0, 15.0, 5.0, 1.5, 0.5)
    ss_steps: int = 7
    refine_iterations: int = 0
    refine_weight: float = 1.0
    refine_scale: float = 1.0
    padding_mask: bool = True
    search_fraction: float = 0.25
    init: str = "none"
    device: str = "auto"

    def __post_init__(self) -> None:
        # Normalise sequences so equal settings compare (and hash) equal.
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        object.__setattr__(self, "sigma_range", tuple(float(v) for v in self.sigma_range))
        object.__setattr__(self, "thetas", tuple(float(v) for v in self.thetas))
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RegistrationConfig":
        """A named preset (see :data:`PRESETS`), with optional overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        values = dict(PRESETS[name])
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "RegistrationConfig":
        """Build from a mapping; unknown keys are an error (they are usually typos)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes: Any) -> "RegistrationConfig":
        """A copy with some parameters changed (validated)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable values (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def feature_key(self) -> Tuple[Any, ...]:
        """The values of the feature parameters: equal keys mean reusable features."""
        return tuple(getattr(self, name) for name in FEATURE_PARAMETERS)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid parameter."""
        _require(isinstance(self.features, str) and self.features.strip() != "", "features must be a non-empty name")
        low, high = _pair(self.hu_window, "hu_window")
        _require(high > low, f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        _require(_is_int(self.mind_radius) and self.mind_radius >= 0, f"mind_radius must be an integer >= 0, got {self.mind_radius!r}")
        _require(_is_int(self.mind_dilation) and self.mind_dilation >= 1, f"mind_dilation must be an integer >= 1, got {self.mind_dilation!r}")
        if self.feature_spacing is not None:
            _require(_positive(self.feature_spacing), f"feature_spacing must be > 0 mm or None, got {self.feature_spacing!r}")
        _require(_positive(self.working_scale) and self.working_scale <= 1.0, f"working_scale must be in (0, 1], got {self.working_scale!r}")
        _require(_is_int(self.levels) and 1 <= self.levels <= MAX_LEVELS, f"levels must be an integer from 1 to {MAX_LEVELS}, got {self.levels!r}")
        _require(_is_int(self.k) and 1 <= self.k <= MAX_K, f"k (search radius) must be an integer from 1 to {MAX_K}, got {self.k!r}")
        _require(_positive(self.beta), f"beta must be > 0, got {self.beta!r}")
        _require(self.sigma_mode in SIGMA_MODES, f"sigma_mode must be one of {SIGMA_MODES}, got {self.sigma_mode!r}")
        _require(_positive(self.alpha), f"alpha must be > 0, got {self.alpha!r}")
        s_low, s_high = _pair(self.sigma_range, "sigma_range")
        _require(0 < s_low <= s_high, f"sigma_range must be (low, high) with 0 < low <= high voxels, got {self.sigma_range}")
        _require(_positive(self.fixed_sigma), f"fixed_sigma must be > 0 voxels, got {self.fixed_sigma!r}")
        _require(isinstance(self.adaptive, bool), f"adaptive must be True or False, got {self.adaptive!r}")
        _require(isinstance(self.filter_cost, bool), f"filter_cost must be True or False, got {self.filter_cost!r}")
        _require(_is_int(self.smoothing_passes) and self.smoothing_passes >= 1, f"smoothing_passes must be an integer >= 1, got {self.smoothing_passes!r}")
        _require(len(self.thetas) > 0, "thetas (the coupling schedule) must not be empty")
        _require(all(_positive(t) for t in self.thetas), f"every theta must be > 0, got {list(self.thetas)}")
        _require(_is_int(self.ss_steps) and 0 <= self.ss_steps <= 20, f"ss_steps must be an integer from 0 to 20, got {self.ss_steps!r}")
        _require(_is_int(self.refine_iterations) and 0 <= self.refine_iterations <= 1000,
                 f"refine_iterations must be an integer from 0 to 1000, got {self.refine_iterations!r}")
        _require(_positive(self.refine_weight), f"refine_weight must be > 0, got {self.refine_weight!r}")
        _require(_positive(self.refine_scale) and self.refine_scale <= 1.0, f"refine_scale must be in (0, 1], got {self.refine_scale!r}")
        _require(isinstance(self.padding_mask, bool), f"padding_mask must be True or False, got {self.padding_mask!r}")
        _require(isinstance(self.search_fraction, (int, float)) and not isinstance(self.search_fraction, bool)
                 and 0 <= self.search_fraction <= 1, f"search_fraction must be from 0 to 1, got {self.search_fraction!r}")
        _require(self.init in INIT_MODES, f"init must be one of {INIT_MODES}, got {self.init!r}")
        _require(isinstance(self.device, str) and _valid_device_name(self.device), f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _pair(value: Any, name: str) -> Tuple[float, float]:
    if len(value) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        raise ConfigError(f"{name} must be two finite numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _valid_device_name(name: str) -> bool:
    if name in ("auto", "cpu", "cuda"):
        return True
    return name.startswith("cuda:") and name[5:].isdigit()


#: Named presets. ``paper`` is Table 1 of the paper (5 levels, k = 1, the paper's theta
#: schedule, window and sigma form with alpha = 1.5, scaling and squaring with 7 steps,
#: adaptive message passing with cost filtering, solved at half the 2 mm grid) with MIND-SSC
#: features, the best features that need no network weights. The paper's sigma form is the
#: default because it measured better than the official code's 0.1-0.5 voxel range on our data
#: (README, "Choices made by measurement"). ``accurate`` widens the search to k = 2 (125
#: offsets per level) with alpha = 1.0, which measured best on training subjects (pseudo-CT of
#: BTCV subjects 1-6) at about twice the solver time. ``fast`` is an interactive preview:
#: MIND-SSC at 3 mm, solved at 6 mm, four levels, a shorter schedule.
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    "accurate": {"k": 2, "alpha": 1.0},
    "fast": {
        "feature_spacing": 3.0,
        "levels": 4,
        "thetas": (50.0, 5.0, 0.5),
        "ss_steps": 5,
    },
}
