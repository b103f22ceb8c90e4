"""The module's parameter node: a typed schema stored in a ``vtkMRMLScriptedModuleNode``.

Everything the GUI shows is a field of this schema, so it is saved and reloaded with the scene:

* **values** (:data:`VALUE_PARAMETERS`) are stored as text with ``SetParameter(name, text)``;
* **node references** (:data:`NODE_PARAMETERS`) are stored with ``SetNodeReferenceID(name, id)``,
  which the scene remaps when it is imported.

The GUI binds each widget of ``Resources/UI/VoxelOptRegistration.ui`` to the field named by its
``SlicerParameterName`` dynamic property (the convention of Slicer's parameterNodeWrapper; the
binding itself is written out in the widget because ``parameterNodeWrapper`` is part of desktop
Slicer only, and this schema must also work, and be tested, on headless ``slicer-core``).

Engine parameters are derived from the engine's parameter schema (:data:`voxelopt.config.SCHEMA`,
which imports neither torch nor SimpleITK): one value per configuration field, named in camelCase
(``ss_steps`` -> ``ssSteps``), with the field's type, default, choices and help text; a (low, high)
pair becomes two values (``hu_window`` -> ``huLow``, ``huHigh``), the theta schedule is text
("150, 50, 15"), and a feature spacing of 0 means "the fixed volume's grid" (None in the engine).
They map onto :class:`voxelopt.RegistrationConfig` through :func:`config_values` and back through
:func:`values_from_config_dict`; units are those of the schema (mm for spacings, voxels of the
solved level for ``k`` and sigmas). GUI-only values (preset, overlay, ...) are defined here.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from voxelopt.config import DEFAULT_PRESET, PRESET_DESCRIPTIONS, SCHEMA, Parameter

from .errors import InputNodeError

MODULE_NAME = "VoxelOptRegistration"


@dataclasses.dataclass(frozen=True)
class ValueParameter:
    """A value field: its name, Python type (bool, int, float or str), default, and config field.

    ``element`` is 0 or 1 for the low or high end of a (low, high) configuration field.
    """

    name: str
    kind: type
    default: Any
    config_field: Optional[str] = None
    choices: Tuple[str, ...] = ()
    doc: str = ""
    element: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class NodeParameter:
    """A node-reference field: its name, the accepted MRML classes (``excluded``: subclasses of
    them that are not accepted), and whether it is an output."""

    name: str
    classes: Tuple[str, ...]
    output: bool = False
    doc: str = ""
    excluded: Tuple[str, ...] = ()


PRESET_CHOICES = tuple(PRESET_DESCRIPTIONS)
OVERLAY_CHOICES = ("entropy", "jacobian", "warped", "none")
#: Configuration fields without a GUI value: network weights are read from their default location.
NOT_IN_GUI = ("weights",)


def _camel_case(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def _engine_parameters(spec: Parameter) -> Tuple[ValueParameter, ...]:
    """The value parameter(s) of one configuration field (two for a (low, high) pair)."""
    if spec.shape == "pair":
        stem = _camel_case(spec.name.split("_")[0])
        return tuple(
            ValueParameter(f"{stem}{end}", float, float(spec.default[i]), spec.name, doc=f"{word} end of the {spec.description()}", element=i)
            for i, (end, word) in enumerate((("Low", "lower"), ("High", "upper")))
        )
    if spec.shape == "list":
        return (ValueParameter(_camel_case(spec.name), str, format_thetas(spec.default), spec.name, doc=f"{spec.description()}; comma-separated"),)
    default = 0.0 if spec.optional and spec.default is None else spec.default
    doc = f"{spec.description()}; 0: none" if spec.optional and spec.type is float else spec.description()
    return (ValueParameter(_camel_case(spec.name), spec.type, default, spec.name, spec.choices, doc),)


def format_thetas(thetas) -> str:
    """Text of a theta schedule, e.g. "150, 50, 15"."""
    return ", ".join(f"{float(t):g}" for t in thetas)


ENGINE_PARAMETERS: Tuple[ValueParameter, ...] = tuple(
    parameter for spec in SCHEMA.values() if spec.name not in NOT_IN_GUI for parameter in _engine_parameters(spec)
)

VALUE_PARAMETERS: Tuple[ValueParameter, ...] = (
    ValueParameter("preset", str, DEFAULT_PRESET, None, PRESET_CHOICES,
                   "preset last applied to the fields below (a record: setting it changes no other value; "
                   "logic.applyPreset does)"),
    *ENGINE_PARAMETERS,
    ValueParameter("overlay", str, "entropy", None, OVERLAY_CHOICES, "foreground shown over the fixed volume"),
    ValueParameter("overlayOpacity", float, 0.5, None, doc="foreground opacity (0-1)"),
    ValueParameter("autoUpdate", bool, False, None, doc="re-run the registration when a parameter changes"),
    ValueParameter("warpedVolume", bool, True, None,
                   doc="resample the moving volume onto the fixed grid (an output volume); off: the transform alone, "
                       "through which the views show the moving volume warped"),
)

#: Node classes a mask may be: a segmentation (all its segments) or a label map (its nonzero voxels).
MASK_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode")
#: Subclasses of vtkMRMLScalarVolumeNode that are no image to register or to write a map into:
#: label maps (segment labels) and volumes of several values per voxel (vectors, tensors, DWI).
NOT_SCALAR_IMAGE = ("vtkMRMLLabelMapVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode",
                    "vtkMRMLDiffusionWeightedVolumeNode")

NODE_PARAMETERS: Tuple[NodeParameter, ...] = (
    NodeParameter("fixedVolume", ("vtkMRMLScalarVolumeNode",), doc="fixed (reference) volume", excluded=NOT_SCALAR_IMAGE),
    NodeParameter("movingVolume", ("vtkMRMLScalarVolumeNode",), doc="moving volume, warped onto the fixed one",
                  excluded=NOT_SCALAR_IMAGE),
    NodeParameter("fixedSegmentation", ("vtkMRMLSegmentationNode",), doc="optional segmentation of the fixed volume"),
    NodeParameter("movingSegmentation", ("vtkMRMLSegmentationNode",), doc="optional segmentation of the moving volume"),
    NodeParameter("fixedMask", MASK_CLASSES, doc="optional mask of the fixed volume: voxels used in the cost"),
    NodeParameter("movingMask", MASK_CLASSES, doc="optional mask of the moving volume: voxels used in the cost"),
    NodeParameter("initialTransform", ("vtkMRMLLinearTransformNode",),
                  doc="optional initial alignment; its FromParent side maps fixed to moving points"),
    NodeParameter("outputTransform", ("vtkMRMLGridTransformNode",), True, "displacement field (FromParent)"),
    NodeParameter("outputVolume", ("vtkMRMLScalarVolumeNode",), True, "moving volume resampled on the fixed grid",
                  NOT_SCALAR_IMAGE),
    NodeParameter("outputEntropy", ("vtkMRMLScalarVolumeNode",), True, "entropy map (nats)", NOT_SCALAR_IMAGE),
    NodeParameter("outputJacobian", ("vtkMRMLScalarVolumeNode",), True, "Jacobian determinant map", NOT_SCALAR_IMAGE),
    NodeParameter("outputSegmentation", ("vtkMRMLSegmentationNode",), True, "moving segmentation warped to the fixed grid"),
    NodeParameter("outputDiceTable", ("vtkMRMLTableNode",), True, "Dice per segment"),
)

VALUE_BY_NAME: Dict[str, ValueParameter] = {p.name: p for p in VALUE_PARAMETERS}
NODE_BY_NAME: Dict[str, NodeParameter] = {p.name: p for p in NODE_PARAMETERS}
#: Every field name a widget may bind to with ``SlicerParameterName``.
PARAMETER_NAMES: Tuple[str, ...] = tuple(VALUE_BY_NAME) + tuple(NODE_BY_NAME)

#: Parameters that only change what is shown, never the registration (auto-update ignores them).
DISPLAY_ONLY = ("overlay", "overlayOpacity", "autoUpdate", "preset")
#: Parameters that choose which outputs are made (a re-run makes them; a user preset does not hold them).
OUTPUT_CHOICES = ("warpedVolume",)
#: The value parameters that change the registration: what a user preset holds.
REGISTRATION_VALUES: Tuple[ValueParameter, ...] = tuple(p for p in VALUE_PARAMETERS
                                                        if p.name not in DISPLAY_ONLY + OUTPUT_CHOICES)


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


#: Stored words read as True / False (case and surrounding spaces ignored).
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number"}


def parse_value(parameter: ValueParameter, text: str, held: bool = False) -> Any:
    """The typed value of stored ``text``: the default for a parameter the node does not hold yet
    (``held`` False and the text empty). Raises :class:`InputNodeError` when a held parameter is
    empty (e.g. a cleared theta schedule: the default is not taken in its place) or the text is
    not a value of the parameter's type (e.g. "abc" for an integer, "2,5" for a number, "maybe"
    for a switch). Text values are stripped of surrounding spaces."""
    if text is None or text.strip() == "":
        if not held:
            return parameter.default
        raise InputNodeError(f"parameter '{parameter.name}' of the {MODULE_NAME} parameter node is empty; "
                             f"{_set_again(parameter)}")
    if parameter.kind is str:
        return text.strip()
    value = _read(parameter.kind, text.strip())
    if value is None:
        raise InputNodeError(
            f"parameter '{parameter.name}' of the {MODULE_NAME} parameter node holds {text!r}, which is not "
            f"{_KIND_WORDS[parameter.kind]}; {_set_again(parameter)}"
        )
    return value


def _set_again(parameter: ValueParameter) -> str:
    return (f"set it again in the module (or with parameters.set_value), e.g. to its default "
            f"{format_value(parameter, parameter.default)!r}")


def _read(kind: type, text: str) -> Any:
    """``text`` as a bool, int or float; None when it is not one (an int must be whole: "3" or "3.0")."""
    if kind is bool:
        word = text.lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    try:
        number = float(text)
    except ValueError:
        return None
    if kind is int:
        return int(number) if number.is_integer() else None
    return number


def get_value(node, name: str) -> Any:
    """The typed value of parameter ``name`` in a parameter node (see :func:`parse_value`)."""
    parameter = VALUE_BY_NAME[name]
    return parse_value(parameter, node.GetParameter(name), name in node.GetParameterNames())


def set_value(node, name: str, value: Any) -> None:
    """Store ``value`` for parameter ``name`` (type-checked; unknown names raise KeyError)."""
    parameter = VALUE_BY_NAME[name]
    node.SetParameter(name, format_value(parameter, value))


def get_values(node) -> Dict[str, Any]:
    """All value parameters of a node, typed, defaults filled in (raises :class:`InputNodeError`
    for an unreadable one, see :func:`parse_value`)."""
    held = set(node.GetParameterNames())
    return {p.name: parse_value(p, node.GetParameter(p.name), p.name in held) for p in VALUE_PARAMETERS}


def readable_values(node) -> Dict[str, Any]:
    """:func:`get_values` without the values whose stored text is unreadable: for showing the node
    (the GUI), which must not fail on a value that a registration then refuses with a clear error."""
    values, held = {}, set(node.GetParameterNames())
    for parameter in VALUE_PARAMETERS:
        try:
            values[parameter.name] = parse_value(parameter, node.GetParameter(parameter.name), parameter.name in held)
        except InputNodeError:
            continue
    return values


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


#: Prefix of the reference role under which a parameter node keeps an output node that a run did
#: not write (see :func:`park_output`).
PARKED_PREFIX = "parked_"


def park_output(node, name: str, referenced) -> None:
    """Keep ``referenced`` (or None) aside for output parameter ``name``: a run that made no such
    output (the warped volume turned off, no segmentations) no longer references the earlier run's
    node as an output, but a later run that makes the output again writes into it
    (:func:`parked_output`) instead of adding a ``..._1`` node beside it."""
    node.SetNodeReferenceID(_parked_role(name), referenced.GetID() if referenced is not None else None)


def parked_output(node, name: str):
    """The node parked for output parameter ``name`` (None when none is)."""
    return node.GetNodeReference(_parked_role(name))


def _parked_role(name: str) -> str:
    if name not in NODE_BY_NAME:
        raise KeyError(f"unknown node parameter {name!r}")
    return PARKED_PREFIX + name


def accepts(parameter: NodeParameter, referenced) -> bool:
    """Whether node parameter ``parameter`` may reference the node ``referenced``."""
    return (any(referenced.IsA(c) for c in parameter.classes)
            and not any(referenced.IsA(c) for c in parameter.excluded))


def set_node(node, name: str, referenced) -> None:
    """Reference ``referenced`` (or None) as parameter ``name``, checking its class."""
    parameter = NODE_BY_NAME[name]
    if referenced is not None and not accepts(parameter, referenced):
        excluded = f" (not a {' or '.join(parameter.excluded)})" if parameter.excluded else ""
        raise TypeError(f"parameter {name} needs a {' or '.join(parameter.classes)}{excluded}, got {referenced.GetClassName()}")
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


def config_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The :class:`voxelopt.RegistrationConfig` keyword arguments described by parameter values.

    Raises ValueError for an unreadable theta schedule or a negative spacing (0: none).
    """
    out: Dict[str, Any] = {}
    pairs: Dict[str, list] = {}
    for parameter in ENGINE_PARAMETERS:
        if parameter.name not in values:
            continue
        value = values[parameter.name]
        if parameter.element is not None:
            pairs.setdefault(parameter.config_field, [None, None])[parameter.element] = value
            continue
        if SCHEMA[parameter.config_field].shape == "list":
            value = parse_thetas(value)
        elif SCHEMA[parameter.config_field].optional and value is not None and value <= 0:
            if value < 0:
                raise ValueError(f"{parameter.name} is {value:g}; give a positive value, or 0 for none "
                                 f"({SCHEMA[parameter.config_field].description()})")
            value = None  # 0 in the GUI means "the fixed image's grid"
        out[parameter.config_field] = value
    out.update({field: tuple(pair) for field, pair in pairs.items() if None not in pair})
    return out


def values_from_config_dict(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Parameter values (GUI fields) from a ``RegistrationConfig.to_dict()`` mapping."""
    values: Dict[str, Any] = {}
    for parameter in ENGINE_PARAMETERS:
        if parameter.config_field not in config:
            continue
        value = config[parameter.config_field]
        if parameter.element is not None:
            value = float(value[parameter.element])
        elif SCHEMA[parameter.config_field].shape == "list":
            value = format_thetas(value)
        elif parameter.kind is float:
            value = 0.0 if value is None else float(value)
        values[parameter.name] = value
    return values
