"""The module's parameter node: a typed schema stored in a ``vtkMRMLScriptedModuleNode``.

Everything the GUI shows is a field of this schema, so it is saved and reloaded with the scene:

* **values** (:data:`VALUE_PARAMETERS`) are stored as text with ``SetParameter(name, text)``;
* **node references** (:data:`NODE_PARAMETERS`) are stored with ``SetNodeReferenceID(name, id)``,
  which the scene remaps when it is imported.

The GUI binds each widget of ``Resources/UI/VoxelOptRegistration.ui`` to the field named by its
``SlicerParameterName`` dynamic property (the convention of Slicer's parameterNodeWrapper; the
binding itself is written out in the widget because ``parameterNodeWrapper`` is part of desktop
Slicer only, and this schema must also work, and be tested, on headless ``slicer-core``).

Engine parameters map onto :class:`voxelopt.RegistrationConfig` through :func:`config_from_values`;
units are those of the config (mm for spacings, voxels of the solved level for ``k`` and sigmas).
"""

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

MODULE_NAME = "VoxelOptRegistration"


@dataclasses.dataclass(frozen=True)
class ValueParameter:
    """A value field: its name, Python type (bool, int, float or str), default, and config field."""

    name: str
    kind: type
    default: Any
    config_field: Optional[str] = None
    choices: Tuple[str, ...] = ()
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class NodeParameter:
    """A node-reference field: its name, the accepted MRML classes, and whether it is an output."""

    name: str
    classes: Tuple[str, ...]
    output: bool = False
    doc: str = ""


PRESET_CHOICES = ("paper", "accurate", "fast")
FEATURE_CHOICES = ("mind", "raw", "mind+raw")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
OVERLAY_CHOICES = ("entropy", "jacobian", "warped", "none")

VALUE_PARAMETERS: Tuple[ValueParameter, ...] = (
    ValueParameter("preset", str, "paper", None, PRESET_CHOICES, "preset last applied to the fields below"),
    ValueParameter("features", str, "mind", "features", doc="feature type: mind, raw, a network name, or several joined by '+'"),
    ValueParameter("levels", int, 5, "levels", doc="pyramid levels (1-7)"),
    ValueParameter("alpha", float, 1.5, "alpha", doc="blurring strength cap (voxels) of the paper's sigma form"),
    ValueParameter("beta", float, 10.0, "beta", doc="softmax sharpness of the displacement entropy"),
    ValueParameter("thetas", str, "150, 50, 15, 5, 1.5, 0.5", "thetas", doc="coupling schedule, comma-separated"),
    ValueParameter("k", int, 1, "k", doc="search radius in voxels (1-3)"),
    ValueParameter("adaptive", bool, True, "adaptive", doc="voxel-adaptive message passing"),
    ValueParameter("filterCost", bool, True, "filter_cost", doc="pre-filter the cost volume"),
    ValueParameter("ssSteps", int, 7, "ss_steps", doc="scaling-and-squaring steps (0 = none)"),
    ValueParameter("refineIterations", int, 0, "refine_iterations", doc="Adam steps refining the final field (0 = off)"),
    ValueParameter("refineWeight", float, 1.25, "refine_weight", doc="smoothness weight of the refinement"),
    ValueParameter("device", str, "auto", "device", DEVICE_CHOICES, "auto (CUDA when present), cpu or cuda"),
    ValueParameter("featureSpacing", float, 2.0, "feature_spacing", doc="feature grid spacing in mm (0 = the fixed grid)"),
    ValueParameter("workingScale", float, 0.5, "working_scale", doc="finest solver level relative to the feature grid"),
    ValueParameter("sigmaMode", str, "paper", "sigma_mode", ("code", "paper"), "sigma form"),
    ValueParameter("sigmaLow", float, 0.1, None, doc="lower end of sigma_range (voxels)"),
    ValueParameter("sigmaHigh", float, 0.5, None, doc="upper end of sigma_range (voxels)"),
    ValueParameter("fixedSigma", float, 0.5, "fixed_sigma", doc="sigma (voxels) when not adaptive"),
    ValueParameter("smoothingPasses", int, 3, "smoothing_passes", doc="3-tap filter passes per filtering"),
    ValueParameter("huLow", float, -800.0, None, doc="lower end of the intensity window (HU)"),
    ValueParameter("huHigh", float, 500.0, None, doc="upper end of the intensity window (HU)"),
    ValueParameter("mindRadius", int, 2, "mind_radius", doc="MIND-SSC patch radius (voxels of the feature grid)"),
    ValueParameter("mindDilation", int, 2, "mind_dilation", doc="MIND-SSC neighbour distance (voxels)"),
    ValueParameter("init", str, "none", "init", ("none", "centers", "com"), "initial alignment"),
    ValueParameter("overlay", str, "entropy", None, OVERLAY_CHOICES, "foreground shown over the fixed volume"),
    ValueParameter("overlayOpacity", float, 0.5, None, doc="foreground opacity (0-1)"),
    ValueParameter("autoUpdate", bool, False, None, doc="re-run the registration when a parameter changes"),
)

NODE_PARAMETERS: Tuple[NodeParameter, ...] = (
    NodeParameter("fixedVolume", ("vtkMRMLScalarVolumeNode",), doc="fixed (reference) volume"),
    NodeParameter("movingVolume", ("vtkMRMLScalarVolumeNode",), doc="moving volume, warped onto the fixed one"),
    NodeParameter("fixedSegmentation", ("vtkMRMLSegmentationNode",), doc="optional segmentation of the fixed volume"),
    NodeParameter("movingSegmentation", ("vtkMRMLSegmentationNode",), doc="optional segmentation of the moving volume"),
    NodeParameter("outputTransform", ("vtkMRMLGridTransformNode",), True, "displacement field (FromParent)"),
    NodeParameter("outputVolume", ("vtkMRMLScalarVolumeNode",), True, "moving volume resampled on the fixed grid"),
    NodeParameter("outputEntropy", ("vtkMRMLScalarVolumeNode",), True, "entropy map (nats)"),
    NodeParameter("outputJacobian", ("vtkMRMLScalarVolumeNode",), True, "Jacobian determinant map"),
    NodeParameter("outputSegmentation", ("vtkMRMLSegmentationNode",), True, "moving segmentation warped to the fixed grid"),
    NodeParameter("outputDiceTable", ("vtkMRMLTableNode",), True, "Dice per segment"),
)

VALUE_BY_NAME: Dict[str, ValueParameter] = {p.name: p for p in VALUE_PARAMETERS}
NODE_BY_NAME: Dict[str, NodeParameter] = {p.name: p for p in NODE_PARAMETERS}
#: Every field name a widget may bind to with ``SlicerParameterName``.
PARAMETER_NAMES: Tuple[str, ...] = tuple(VALUE_BY_NAME) + tuple(NODE_BY_NAME)

#: Parameters that only change what is shown, never the registration (auto-update ignores them).
DISPLAY_ONLY = ("overlay", "overlayOpacity", "autoUpdate", "preset")


def format_value(parameter: ValueParameter, value: Any) -> str:
    """The text stored in the node for ``value`` (bool as "true"/"false", floats with repr)."""
    if parameter.kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"parameter {parameter.name} must be True or False, got {value!r}")
        return "true" if value else "false"
    if parameter.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"parameter {parameter.name} must be an integer, got {value!r}")
        return str(value)
    if parameter.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"parameter {parameter.name} must be a number, got {value!r}")
        return repr(float(value))
    if not isinstance(value, str):
        raise TypeError(f"parameter {parameter.name} must be text, got {value!r}")
    return value


def parse_value(parameter: ValueParameter, text: str) -> Any:
    """The typed value of stored ``text``; the default when the text is empty or unreadable."""
    if text is None or text == "":
        return parameter.default
    try:
        if parameter.kind is bool:
            return text.strip().lower() in ("true", "1", "yes", "on")
        if parameter.kind is int:
            return int(float(text))
        if parameter.kind is float:
            return float(text)
    except ValueError:
        return parameter.default
    return text


def get_value(node, name: str) -> Any:
    """The typed value of parameter ``name`` in a parameter node."""
    parameter = VALUE_BY_NAME[name]
    return parse_value(parameter, node.GetParameter(name))


def set_value(node, name: str, value: Any) -> None:
    """Store ``value`` for parameter ``name`` (type-checked; unknown names raise KeyError)."""
    parameter = VALUE_BY_NAME[name]
    node.SetParameter(name, format_value(parameter, value))


def get_values(node) -> Dict[str, Any]:
    """All value parameters of a node, typed, defaults filled in."""
    return {p.name: parse_value(p, node.GetParameter(p.name)) for p in VALUE_PARAMETERS}


def set_values(node, values: Mapping[str, Any]) -> None:
    """Store several values in one modification (one Modified event)."""
    unknown = sorted(set(values) - set(VALUE_BY_NAME))
    if unknown:
        raise KeyError(f"unknown parameter(s) {', '.join(unknown)}")
    was_modifying = node.StartModify()
    try:
        for name, value in values.items():
            set_value(node, name, value)
    finally:
        node.EndModify(was_modifying)


def get_node(node, name: str):
    """The node referenced by parameter ``name`` (None when unset)."""
    if name not in NODE_BY_NAME:
        raise KeyError(f"unknown node parameter {name!r}")
    return node.GetNodeReference(name)


def set_node(node, name: str, referenced) -> None:
    """Reference ``referenced`` (or None) as parameter ``name``, checking its class."""
    parameter = NODE_BY_NAME[name]
    if referenced is not None and not any(referenced.IsA(c) for c in parameter.classes):
        raise TypeError(f"parameter {name} needs a {' or '.join(parameter.classes)}, got {referenced.GetClassName()}")
    node.SetNodeReferenceID(name, referenced.GetID() if referenced is not None else None)


def initialize_defaults(node) -> None:
    """Write the default of every value parameter that the node does not have yet."""
    was_modifying = node.StartModify()
    for parameter in VALUE_PARAMETERS:
        if node.GetParameter(parameter.name) == "":
            node.SetParameter(parameter.name, format_value(parameter, parameter.default))
    node.EndModify(was_modifying)


def parse_thetas(text: str) -> Tuple[float, ...]:
    """The theta schedule from text such as "150, 50, 15" (commas and/or spaces)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError("the theta schedule is empty; enter numbers such as '150, 50, 15, 5, 1.5, 0.5'")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"the theta schedule {text!r} must be numbers separated by commas") from None


def format_thetas(thetas) -> str:
    """Text of a theta schedule, e.g. "150, 50, 15"."""
    return ", ".join(f"{float(t):g}" for t in thetas)


def config_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The :class:`voxelopt.RegistrationConfig` keyword arguments described by parameter values."""
    out: Dict[str, Any] = {}
    for parameter in VALUE_PARAMETERS:
        if parameter.config_field is None or parameter.name not in values:
            continue
        out[parameter.config_field] = values[parameter.name]
    if "thetas" in out:
        out["thetas"] = parse_thetas(out["thetas"])
    if "feature_spacing" in out and out["feature_spacing"] is not None and out["feature_spacing"] <= 0:
        out["feature_spacing"] = None  # 0 in the GUI means "the fixed image's grid"
    if "sigmaLow" in values and "sigmaHigh" in values:
        out["sigma_range"] = (values["sigmaLow"], values["sigmaHigh"])
    if "huLow" in values and "huHigh" in values:
        out["hu_window"] = (values["huLow"], values["huHigh"])
    return out


def values_from_config_dict(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Parameter values (GUI fields) from a ``RegistrationConfig.to_dict()`` mapping."""
    values: Dict[str, Any] = {}
    for parameter in VALUE_PARAMETERS:
        field = parameter.config_field
        if field is None or field not in config:
            continue
        value = config[field]
        if parameter.name == "thetas":
            value = format_thetas(value)
        elif parameter.name == "featureSpacing":
            value = 0.0 if value is None else float(value)
        elif parameter.kind is float:
            value = float(value)
        values[parameter.name] = value
    if "sigma_range" in config:
        values["sigmaLow"], values["sigmaHigh"] = (float(v) for v in config["sigma_range"])
    if "hu_window" in config:
        values["huLow"], values["huHigh"] = (float(v) for v in config["hu_window"])
    return values


def solver_changed_only(old: Mapping[str, Any], new: Mapping[str, Any], feature_fields: List[str]) -> bool:
    """True when two config dicts differ only in fields outside ``feature_fields`` (solver parameters)."""
    return all(_equal(old.get(f), new.get(f)) for f in feature_fields)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b
