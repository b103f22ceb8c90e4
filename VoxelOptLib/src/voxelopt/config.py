"""The typed registration configuration: one declarative parameter schema, its validation, presets.

Every parameter of the method is a field of the frozen dataclass :class:`RegistrationConfig`.
Each field carries its :class:`Parameter` spec (type, unit, range or choices, per-preset values,
help text, group, and when it applies) in ``dataclasses.field(metadata=...)``; :data:`SCHEMA`
collects them with their names and defaults. Validation, the command-line options
(:mod:`voxelopt.cli`) and the Slicer module's parameter node all derive from this one schema.

Groups: ``features`` parameters change the features (a change recomputes them, see
:mod:`voxelopt.cache`), ``solver`` parameters only re-run the optimisation, ``device`` chooses
where it runs.

Units: spacings in millimetres; ``k``, ``sigma_range`` and ``fixed_sigma`` in voxels of the
pyramid level being solved; ``thetas`` are the paper's coupling parameters (the energy weight
of the coupling term is ``1 / (2 * theta)``).

This module imports neither torch nor SimpleITK (the Slicer module and the CLI's argument
checks use it before any computation).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ConfigError

GROUPS = ("features", "solver", "device")
SHAPES = ("scalar", "pair", "list")
#: Preset names and what each is for (values: the ``presets`` of each :class:`Parameter`).
PRESET_DESCRIPTIONS: Dict[str, str] = {
    "abdomen": "the default for abdominal CT: affine initial alignment, MIND-SSC at 2 mm solved at 4 mm over "
               "4 levels with a short schedule, then the continuous refinement (chosen with benchmarks/choose_default.py)",
    "accurate": "abdomen with OBELISK network features beside MIND-SSC and a wider search (k = 2): the most accurate "
                "on the development pairs (+2.4 Dice points over abdomen), 2-4x its time on 2 CPU cores; the "
                "network's weights are downloaded on first use (or given with weights)",
    "fast": "abdomen from the centres of mass and without the refinement: no affine stage, a quick preview",
    "paper": "Table 1 of the paper: MIND-SSC at 2 mm solved at 4 mm, 5 levels, 6 coupling values, no initial alignment",
}
#: The preset used when none is named (command line, ``register`` without a config, the Slicer
#: module); its values are the schema's defaults.
DEFAULT_PRESET = "abdomen"
NON_NETWORK_FEATURES = ("raw", "mind")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """The declarative spec of one configuration field.

    Attributes:
        type: type of the value, or of each element for a pair or list: bool, int, float or str.
        help: one-sentence meaning (the CLI help, the Slicer tooltip, the docs).
        group: ``"features"``, ``"solver"`` or ``"device"`` (see the module doc).
        unit: ``"mm"``, ``"HU"``, ``"voxels"`` or ``""`` (dimensionless).
        shape: ``"scalar"``, ``"pair"`` (two values) or ``"list"`` (one or more values).
        minimum, maximum: inclusive bounds of the value (of every element for a pair or list).
        exclusive_minimum: the value must be strictly greater than ``minimum``.
        choices: the allowed values of a str parameter (empty: any non-empty text).
        also_accepts: for str parameters with choices, a test of further valid values and their
            wording (e.g. ``cuda:N`` devices).
        ordered: for pairs, ``"<"`` (low < high) or ``"<="`` (low <= high).
        optional: None is a valid value.
        presets: value per preset name, where it differs from the default.
        applies: when the parameter has an effect (None: always), with ``applies_text`` saying
            so in words.
        name, default: filled in from the dataclass field (see :data:`SCHEMA`).
    """

    type: type
    help: str
    group: str
    unit: str = ""
    shape: str = "scalar"
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: bool = False
    choices: Tuple[str, ...] = ()
    also_accepts: Optional[Tuple[Callable[[str], bool], str]] = None
    ordered: str = ""
    optional: bool = False
    presets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    applies: Optional[Callable[["RegistrationConfig"], bool]] = None
    applies_text: str = ""
    name: str = ""
    default: Any = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS or self.shape not in SHAPES or self.ordered not in ("", "<", "<="):
            raise ValueError(f"malformed parameter spec (group {self.group!r}, shape {self.shape!r}, ordered {self.ordered!r})")

    def description(self) -> str:
        """Help text with the valid range, the unit and when the parameter applies, e.g.
        ``"softmax sharpness of the displacement entropy; > 0"`` (the CLI help, Slicer's tooltips)."""
        parts = [self.help]
        if self.range_text():
            parts.append(f"{self.range_text()} {self.unit}".strip())
        elif self.unit:
            parts.append(f"in {self.unit}")
        if self.applies_text:
            parts.append(f"only {self.applies_text}")
        return "; ".join(parts)

    def range_text(self) -> str:
        """The valid range in words, e.g. ``"> 0"``, ``"from 1 to 7"``, ``">= 0"`` (empty: unbounded)."""
        low, high = _number_text(self.minimum), _number_text(self.maximum)
        if self.minimum is not None and self.maximum is not None:
            return f"in ({low}, {high}]" if self.exclusive_minimum else f"from {low} to {high}"
        if self.minimum is not None:
            return f"> {low}" if self.exclusive_minimum else f">= {low}"
        if self.maximum is not None:
            return f"<= {high}"
        return ""

    def check(self, value: Any) -> None:
        """Raise :class:`ConfigError` naming this parameter when ``value`` is invalid."""
        if value is None:
            if not self.optional:
                raise ConfigError(f"{self.name} must not be None")
            return
        if self.shape == "scalar":
            self._check_element(value, self.name)
            return
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise ConfigError(f"{self.name} must be a sequence of numbers, got {value!r}")
        if self.shape == "pair" and len(value) != 2:
            raise ConfigError(f"{self.name} must be two numbers (low, high), got {value!r}")
        if self.shape == "list" and len(value) == 0:
            raise ConfigError(f"{self.name} must not be empty")
        for element in value:
            self._check_element(element, f"every value of {self.name}")
        if self.ordered == "<" and not value[0] < value[1]:
            raise ConfigError(f"{self.name} must be (low, high) with low < high, got {tuple(value)}")
        if self.ordered == "<=" and not value[0] <= value[1]:
            raise ConfigError(f"{self.name} must be (low, high) with low <= high, got {tuple(value)}")

    def _check_element(self, value: Any, what: str) -> None:
        if self.type is bool:
            _require(isinstance(value, bool), f"{what} must be True or False, got {value!r}")
        elif self.type is str:
            self._check_text(value, what)
        else:
            kind = "an integer" if self.type is int else "a number"
            valid_type = _is_number(value) and math.isfinite(value)
            if self.type is int:
                valid_type = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            _require(valid_type, f"{what} must be {kind}{self._range_suffix()}, got {value!r}")
            too_low = self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum)
            too_high = self.maximum is not None and value > self.maximum
            _require(not (too_low or too_high), f"{what} must be {self.range_text()}{self._unit_suffix()}, got {value!r}")

    def _check_text(self, value: Any, what: str) -> None:
        _require(isinstance(value, str) and value.strip() != "", f"{what} must be a non-empty name, got {value!r}")
        if not self.choices or value in self.choices:
            return
        if self.also_accepts is not None and self.also_accepts[0](value):
            return
        allowed = ", ".join(repr(c) for c in self.choices)
        if self.also_accepts is not None:
            allowed += f" or {self.also_accepts[1]}"
        raise ConfigError(f"{what} must be one of {allowed}, got {value!r}")

    def _range_suffix(self) -> str:
        text = self.range_text()
        return f" {text}" if text else ""

    def _unit_suffix(self) -> str:
        return f" {self.unit}" if self.unit else ""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _number_text(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"


def _is_cuda_index(name: str) -> bool:
    return name.startswith("cuda:") and name[5:].isdigit()


def _feature_names(config: "RegistrationConfig") -> Tuple[str, ...]:
    return tuple(name.strip() for name in config.features.split("+"))


#: The feature types built into the library (``voxelopt.register_extractor`` adds more).
BUILTIN_FEATURES = ("mind", "obelisk", "pdd", "raw", "torchscript", "universal")


def feature_types() -> Tuple[str, ...]:
    """The names ``features`` accepts (joined with '+'): the built-in ones and those added with
    ``voxelopt.register_extractor``. Those can only have been added once ``voxelopt.features``
    was imported, so the answer needs no torch."""
    base = sys.modules.get("voxelopt.features.base")
    added = base.available_extractors() if base is not None else ()
    return tuple(sorted(set(BUILTIN_FEATURES) | set(added)))


def _check_features(config: "RegistrationConfig") -> None:
    """Raise :class:`ConfigError` unless ``config.features`` names known feature types joined by
    '+', each once."""
    text, names = config.features, _feature_names(config)
    if not all(names):
        raise ConfigError(f"features {text!r} has an empty part; join feature types with '+', e.g. 'mind+obelisk'")
    known = feature_types()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown feature type {', '.join(unknown)}; available: {', '.join(known)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"features {text!r} names {', '.join(twice)} more than once")


def _param(default: Any, spec: Parameter) -> Any:
    """A dataclass field with ``default`` and its :class:`Parameter` spec as metadata."""
    return dataclasses.field(default=default, metadata={"parameter": spec})


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Every parameter of a VoxelOpt registration; see :data:`SCHEMA` (or each field's
    ``Parameter``) for its type, unit, range, help text and when it applies.

    Build with a preset (``RegistrationConfig.preset("paper", alpha=2.0)``), ``from_dict``, the
    constructor, or ``replace``; every path validates.
    """

    features: str = _param("mind", Parameter(
        str, "feature type: 'raw' (windowed intensity), 'mind' (MIND-SSC), a pretrained network name, "
        "or several joined with '+' (e.g. 'mind+obelisk')", "features", presets={"accurate": "mind+obelisk"}))
    hu_window: Tuple[float, float] = _param((-800.0, 500.0), Parameter(
        float, "intensity window (low, high); intensities are clipped to it and scaled to [0, 1] before any "
        "feature is computed", "features", unit="HU", shape="pair", ordered="<"))
    mind_radius: int = _param(2, Parameter(
        int, "MIND-SSC patch radius (box of 2r+1) in voxels of the feature grid", "features", unit="voxels",
        minimum=0, maximum=5, applies=lambda c: "mind" in _feature_names(c), applies_text="with MIND features"))
    mind_dilation: int = _param(2, Parameter(
        int, "MIND-SSC neighbour distance in voxels of the feature grid", "features", unit="voxels",
        minimum=1, maximum=5, applies=lambda c: "mind" in _feature_names(c), applies_text="with MIND features"))
    weights: Optional[str] = _param(None, Parameter(
        str, "network weights file for network features (None: the network's default location)", "features",
        optional=True, applies=lambda c: any(n not in NON_NETWORK_FEATURES for n in _feature_names(c)),
        applies_text="with network features"))
    feature_spacing: Optional[float] = _param(2.0, Parameter(
        float, "isotropic spacing of the grid on which features are computed, keeping the fixed image's "
        "extent and direction (none: the fixed image's own grid)", "features", unit="mm", minimum=0.0,
        exclusive_minimum=True, optional=True))
    working_scale: float = _param(0.5, Parameter(
        float, "the solver's finest level is the feature grid scaled by this factor (paper: 0.5, i.e. 4 mm "
        "voxels for 2 mm features)", "features", minimum=0.0, maximum=1.0, exclusive_minimum=True))
    levels: int = _param(4, Parameter(
        int, "pyramid levels; each level halves every axis that stays >= 4 voxels", "solver",
        minimum=1, maximum=7, presets={"paper": 5}))
    k: int = _param(1, Parameter(
        int, "search radius: (2k+1)^3 integer offsets per voxel and level", "solver", unit="voxels",
        minimum=1, maximum=3, presets={"accurate": 2}))
    k_finest: int = _param(0, Parameter(
        int, "search radius at the finest level, which has 8x the voxels of the next and so most of the search's "
        "cost (0: k)", "solver", unit="voxels", minimum=0, maximum=3))
    beta: float = _param(10.0, Parameter(
        float, "softmax sharpness of the displacement entropy", "solver", minimum=0.0, exclusive_minimum=True,
        maximum=1e6))
    sigma_mode: str = _param("paper", Parameter(
        str, "entropy-to-sigma mapping: 'paper' (sigma = alpha * ln(E / max E + 1)) or 'code' (the official "
        "code: min-max normalised entropy, log2, mapped to sigma_range)", "solver", choices=("paper", "code"),
        applies=lambda c: c.adaptive, applies_text="with adaptive message passing"))
    alpha: float = _param(1.5, Parameter(
        float, "blurring strength cap of the paper's sigma form", "solver", unit="voxels", minimum=0.0,
        exclusive_minimum=True, maximum=100.0,
        applies=lambda c: c.adaptive and c.sigma_mode == "paper", applies_text="with adaptive message passing and sigma_mode 'paper'"))
    sigma_range: Tuple[float, float] = _param((0.1, 0.5), Parameter(
        float, "sigma range (low, high) of the official code's sigma form", "solver", unit="voxels", shape="pair",
        minimum=0.0, exclusive_minimum=True, maximum=100.0, ordered="<=",
        applies=lambda c: c.adaptive and c.sigma_mode == "code", applies_text="with adaptive message passing and sigma_mode 'code'"))
    adaptive: bool = _param(True, Parameter(
        bool, "voxel-adaptive message passing (off: fixed_sigma everywhere, the paper's ablation)", "solver"))
    fixed_sigma: float = _param(0.5, Parameter(
        float, "sigma of the non-adaptive message passing", "solver", unit="voxels", minimum=0.0,
        exclusive_minimum=True, maximum=100.0, applies=lambda c: not c.adaptive, applies_text="without adaptive message passing"))
    filter_cost: bool = _param(True, Parameter(
        bool, "pre-filter the cost volume with the message passing (paper: on)", "solver"))
    smoothing_passes: int = _param(3, Parameter(
        int, "how many times each filtering applies the 3-tap separable filter", "solver", minimum=1, maximum=20))
    thetas: Tuple[float, ...] = _param((50.0, 5.0, 0.5), Parameter(
        float, "coupling schedule of the coordinate descent, one iteration per value", "solver", shape="list",
        minimum=1e-6, maximum=1e6, presets={"paper": (150.0, 50.0, 15.0, 5.0, 1.5, 0.5)}))
    ss_steps: int = _param(5, Parameter(
        int, "scaling-and-squaring steps per level (0: add the residual, no integration)", "solver",
        minimum=0, maximum=20, presets={"paper": 7}))
    refine_iterations: int = _param(40, Parameter(
        int, "Gauss-Newton steps of the optional continuous refinement of the final field (0: off, the paper's "
        "method); it stops early when a step does not lower the data term", "solver", minimum=0, maximum=1000,
        presets={"paper": 0, "fast": 0}))
    refine_weight: float = _param(1.25, Parameter(
        float, "damping of the refinement's steps relative to the features' mean curvature (larger: smaller, "
        "smoother steps)", "solver", minimum=0.0, exclusive_minimum=True, maximum=1e6,
        applies=lambda c: c.refine_iterations > 0, applies_text="with refine_iterations > 0"))
    refine_scale: float = _param(0.5, Parameter(
        float, "the refinement runs on the working grid scaled by this factor (1: the working grid itself, 8x the "
        "voxels of 0.5: about 8 s for 40 steps of a 192x160x256 pair on 2 CPU cores; 0.5: 0.6-1.0 s, at some "
        "accuracy)", "solver", minimum=0.0,
        exclusive_minimum=True, maximum=1.0,
        applies=lambda c: c.refine_iterations > 0, applies_text="with refine_iterations > 0"))
    padding_mask: bool = _param(True, Parameter(
        bool, "leave each image's unscanned voxels out of the cost: outside its grid, and border slabs of one "
        "constant value (e.g. -1024) that pad a thin scan, or of two values below the HU window (-1024 and -3024 "
        "outside the reconstruction circle)", "solver"))
    search_fraction: float = _param(0.25, Parameter(
        float, "cap each level's search radius along an axis at this fraction of the fixed image's scanned "
        "thickness along it (the typical line through the scanned region: a slab's thickness also on a tilted "
        "grid), so thin or partial fields of view are not searched beyond their size (0: only k)", "solver",
        minimum=0.0, maximum=1.0))
    init: str = _param("affine", Parameter(
        str, "initial alignment: 'none', 'centers' (image centres), 'com' (intensity centres of mass) or 'affine' "
        "(12-parameter mutual-information alignment within the scanned regions)",
        "features", choices=("none", "centers", "com", "affine"), presets={"paper": "none", "fast": "com"}))
    device: str = _param("auto", Parameter(
        str, "where to compute: 'auto' (CUDA when present, else the CPU), 'cpu', 'cuda' or 'cuda:N'", "device",
        choices=("auto", "cpu", "cuda"), also_accepts=(_is_cuda_index, "'cuda:N'")))

    def __post_init__(self) -> None:
        # Normalise sequences so equal settings compare (and hash) equal; validation names bad values.
        # NumPy scalars (np.int64(3), np.float32(2.0)) become Python numbers.
        for spec in SCHEMA.values():
            value = getattr(self, spec.name)
            if spec.shape != "scalar" and hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
                object.__setattr__(self, spec.name, tuple(float(v) if _is_number(v) else v for v in value))
            elif _is_number(value) and type(value) not in (int, float):
                object.__setattr__(self, spec.name, int(value) if isinstance(value, numbers.Integral) else float(value))
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "RegistrationConfig":
        """A named preset (see :data:`PRESETS`), with optional overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RegistrationConfig":
        """Build from a mapping; unknown keys are an error (they are usually typos)."""
        unknown = sorted(set(values) - set(SCHEMA))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(SCHEMA))}")
        return cls(**values)

    def replace(self, **changes: Any) -> "RegistrationConfig":
        """A copy with some parameters changed (validated)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable values (tuples become lists)."""
        out = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    def search_radius(self, finest: bool) -> int:
        """The search radius (voxels of the level) of a pyramid level: ``k_finest`` at the finest
        level when it is set, ``k`` elsewhere."""
        return self.k_finest if finest and self.k_finest > 0 else self.k

    def applies(self, name: str) -> bool:
        """True when parameter ``name`` has an effect with the other values of this configuration."""
        spec = SCHEMA[name]
        return spec.applies is None or bool(spec.applies(self))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid parameter (schema order)."""
        for spec in SCHEMA.values():
            spec.check(getattr(self, spec.name))
        _check_features(self)


def _is_number(value: Any) -> bool:
    """An int or float, NumPy's included, but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: The schema: field name -> its :class:`Parameter`, with ``name`` and ``default`` filled in,
#: in declaration order.
SCHEMA: Dict[str, Parameter] = {
    f.name: dataclasses.replace(f.metadata["parameter"], name=f.name, default=f.default)
    for f in dataclasses.fields(RegistrationConfig)
}


def _parameters_text() -> str:
    """Every parameter's help (as ``--help`` and Slicer's tooltips give it), its default and its
    value in the presets that change it: appended to the class docstring, so ``help()`` lists them."""
    lines = ["", "    Parameters (default; value in the presets that change it):", ""]  # the docstring's indent
    for spec in SCHEMA.values():
        values = ", ".join([f"default {spec.default!r}"] + [f"{name} {value!r}" for name, value in spec.presets.items()])
        lines.append(f"        {spec.name}: {spec.description()} ({values})")
    return "\n".join(lines) + "\n"


RegistrationConfig.__doc__ = (RegistrationConfig.__doc__ or "") + _parameters_text()

#: Named presets: preset name -> the values that differ from the defaults (from the schema).
#: ``paper`` is Table 1 of the paper with MIND-SSC features, the best features that need no
#: network weights; the paper's sigma form is the default because it measured better than the
#: official code's 0.1-0.5 voxel range on our data (README, "Choices made by measurement").
#: ``abdomen`` (the default) and ``accurate`` were chosen with benchmarks/choose_default.py: the
#: default is the best candidate within the time rule, ``accurate`` the best one without it.
#: ``fast`` is an interactive preview.
PRESETS: Dict[str, Dict[str, Any]] = {
    preset: {spec.name: spec.presets[preset] for spec in SCHEMA.values() if preset in spec.presets}
    for preset in PRESET_DESCRIPTIONS
}
