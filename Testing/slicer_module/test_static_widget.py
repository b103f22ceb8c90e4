"""Static checks of what needs desktop Slicer (the Qt widget, the CMake packaging).

Desktop Slicer cannot run here, so the widget is kept thin and checked without running it: the
.ui parses and binds only existing parameters, every control the issue asks for is there, the
module files compile for Python 3.9 (Slicer 5.8) and CMake packages every file.
"""

import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest

from voxelopt.config import SCHEMA
from VoxelOptRegistrationLib import parameters

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(REPO, "VoxelOptSlicer")
UI_FILE = os.path.join(MODULE_DIR, "Resources", "UI", "VoxelOptRegistration.ui")
#: Engine modules that import neither torch nor SimpleITK (the module may import them at start-up).
LIGHT_ENGINE_MODULES = ("voxelopt", "voxelopt.config", "voxelopt.errors")


def ui_widgets():
    """{objectName: (class, SlicerParameterName or None, element)} of every widget in the .ui."""
    root = ET.parse(UI_FILE).getroot()
    out = {}
    for widget in root.iter("widget"):
        name = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
        out[widget.get("name")] = (widget.get("class"), name, widget)
    return root, out


def prop_value(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = list(prop)[0]
            if child.tag == "stringlist":
                return [s.text for s in child]
            return child.text
    return None


def test_ui_parses_and_every_bound_name_is_a_parameter():
    root, widgets = ui_widgets()
    assert root.tag == "ui" and root.find("class").text == "VoxelOptRegistration"
    bound = {param: name for name, (_, param, _) in widgets.items() if param}
    unknown = sorted(set(bound) - set(parameters.PARAMETER_NAMES))
    assert not unknown, f"widgets bound to parameters that do not exist: {unknown}"
    # and the reverse: every parameter is reachable from the GUI, exactly once
    assert sorted(bound) == sorted(parameters.PARAMETER_NAMES)
    params = [param for _, (_, param, _) in widgets.items() if param]
    assert len(params) == len(set(params))


def test_every_engine_parameter_has_a_widget():
    """Every field of the engine's schema has a bound widget, except those listed in NOT_IN_GUI
    (checked against SCHEMA itself, not against the bridge's derived parameter list)."""
    _, widgets = ui_widgets()
    bound = {param for _, (_, param, _) in widgets.items() if param}
    fields_with_widget = {parameters.VALUE_BY_NAME[param].config_field for param in bound if param in parameters.VALUE_BY_NAME}
    missing = sorted(set(SCHEMA) - set(parameters.NOT_IN_GUI) - fields_with_widget)
    assert not missing, f"engine parameters without a widget: {missing}"
    assert set(parameters.NOT_IN_GUI) == {"weights"}, "a new exception needs a reason in parameters.NOT_IN_GUI"


def test_ui_has_every_control_the_issue_lists():
    _, widgets = ui_widgets()
    by_param = {param: cls for _, (cls, param, _) in widgets.items() if param}
    required = {
        "fixedVolume": "qMRMLNodeComboBox", "movingVolume": "qMRMLNodeComboBox",
        "fixedSegmentation": "qMRMLNodeComboBox", "movingSegmentation": "qMRMLNodeComboBox",
        "preset": "QComboBox", "features": "QComboBox", "levels": "QSpinBox", "alpha": "QDoubleSpinBox",
        "beta": "QDoubleSpinBox", "thetas": "QLineEdit", "k": "QSpinBox", "adaptive": "QCheckBox",
        "filterCost": "QCheckBox", "ssSteps": "QSpinBox", "device": "QComboBox",
        "outputTransform": "qMRMLNodeComboBox", "outputVolume": "qMRMLNodeComboBox",
        "outputEntropy": "qMRMLNodeComboBox", "outputJacobian": "qMRMLNodeComboBox", "autoUpdate": "QCheckBox",
        "fixedMask": "qMRMLNodeComboBox", "movingMask": "qMRMLNodeComboBox", "initialTransform": "qMRMLNodeComboBox",
        "paddingMask": "QCheckBox", "searchFraction": "QDoubleSpinBox", "refineScale": "QDoubleSpinBox",
    }
    for param, cls in required.items():
        assert by_param.get(param) == cls, f"{param}: expected a {cls}, found {by_param.get(param)}"
    for name in ("applyButton", "progressBar", "resultsTextEdit", "deviceLabel"):
        assert name in widgets
    # Advanced parameters in a collapsed section
    advanced = widgets["advancedCollapsibleButton"][2]
    assert prop_value(advanced, "collapsed") == "true"
    inside = {w.get("name") for w in advanced.iter("widget")}
    for name in ("levelsSpinBox", "alphaSpinBox", "betaSpinBox", "thetasLineEdit", "kSpinBox", "adaptiveCheckBox",
                 "filterCostCheckBox", "ssStepsSpinBox", "paddingMaskCheckBox", "searchFractionSpinBox", "refineScaleSpinBox",
                 "initialTransformSelector"):
        assert name in inside, f"{name} should be in the Advanced section"


def test_ui_choices_and_ranges_match_the_parameter_schema():
    _, widgets = ui_widgets()
    for _, (cls, param, element) in widgets.items():
        if not param:
            continue
        if cls == "qMRMLNodeComboBox":
            spec = parameters.NODE_BY_NAME[param]
            assert set(prop_value(element, "nodeTypes")) <= set(spec.classes) | {"vtkMRMLTransformNode"}
            if spec.output:
                assert prop_value(element, "noneEnabled") == "true" and prop_value(element, "addEnabled") == "true"
        elif cls == "QComboBox":
            spec = parameters.VALUE_BY_NAME[param]
            items = [item.find("property/string").text for item in element.findall("item")]
            assert spec.default in items, f"{param}: default {spec.default!r} not offered"
            if spec.choices:
                assert set(items) == set(spec.choices), f"{param}: {items} vs {spec.choices}"
        elif cls in ("QSpinBox", "QDoubleSpinBox"):
            spec = parameters.VALUE_BY_NAME[param]
            low, high = float(prop_value(element, "minimum")), float(prop_value(element, "maximum"))
            assert low <= spec.default <= high, f"{param}: default {spec.default} outside [{low}, {high}]"


def test_engine_widgets_follow_the_engine_schema():
    """Type, range, decimals, choices and tooltip of every widget bound to an engine value come
    from voxelopt.config.SCHEMA (through parameters.ENGINE_PARAMETERS)."""
    _, widgets = ui_widgets()
    by_param = {param: (name, cls, element) for name, (cls, param, element) in widgets.items() if param}
    expected_class = {bool: ("QCheckBox",), int: ("QSpinBox",), float: ("QDoubleSpinBox",), str: ("QComboBox", "QLineEdit")}
    for parameter in parameters.ENGINE_PARAMETERS:
        name, cls, element = by_param[parameter.name]
        spec = SCHEMA[parameter.config_field]
        assert cls in expected_class[parameter.kind], f"{name}: a {cls} for a {parameter.kind.__name__} value"
        assert prop_value(element, "toolTip") == parameter.doc, f"{name}: tooltip is not the schema's help text"
        if cls == "QComboBox":
            items = [item.find("property/string").text for item in element.findall("item")]
            if spec.choices:
                assert items == list(spec.choices), f"{name}: items {items} vs {spec.choices}"
            else:
                assert prop_value(element, "editable") == "true", f"{name}: free text needs an editable combo box"
        if cls not in ("QSpinBox", "QDoubleSpinBox"):
            continue
        decimals = int(prop_value(element, "decimals") or 0)
        step = 10.0 ** -decimals
        for value in [spec.default, *spec.presets.values()]:
            for v in value if isinstance(value, tuple) else [value]:
                assert v is None or round(v, decimals) == v, f"{name}: {decimals} decimals cannot show {v}"
        low, high = float(prop_value(element, "minimum")), float(prop_value(element, "maximum"))
        if spec.optional:
            assert low == 0.0, f"{name}: 0 stands for None"
        elif spec.minimum is not None:
            expected_low = spec.minimum + step if spec.exclusive_minimum else spec.minimum
            assert low == pytest.approx(expected_low), f"{name}: minimum {low}, schema {spec.range_text()}"
        if spec.maximum is not None:
            assert high == spec.maximum, f"{name}: maximum {high}, schema {spec.range_text()}"
        unit = {"mm": " mm", "HU": " HU"}.get(spec.unit)
        assert prop_value(element, "suffix") == unit, f"{name}: suffix should show the unit {spec.unit!r}"


def test_every_node_selector_gets_the_scene():
    root, widgets = ui_widgets()
    receivers = {c.find("receiver").text for c in root.iter("connection") if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    selectors = {name for name, (cls, _, _) in widgets.items() if cls == "qMRMLNodeComboBox"}
    assert selectors == receivers


def module_python_files():
    out = []
    for folder, dirs, files in os.walk(MODULE_DIR):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", "Testing")]
        out += [os.path.relpath(os.path.join(folder, f), MODULE_DIR) for f in files if f.endswith(".py")]
    return sorted(out)


@pytest.mark.parametrize("relative", module_python_files())
def test_module_files_compile_for_python_3_9(relative):
    path = os.path.join(MODULE_DIR, relative)
    source = open(path, encoding="utf-8").read()
    tree = ast.parse(source, filename=path, feature_version=(3, 9))  # no match, no 3.10+ syntax
    compile(source, path, "exec")
    # No PEP 604 unions (X | Y) in annotations: they fail at runtime on 3.9.
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations = [node.annotation]
        for annotation in annotations:
            if annotation is not None:
                assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)), (
                    f"{relative}:{node.lineno}: X | Y annotation"
                )


def test_module_file_defines_slicer_classes_and_imports_no_torch_at_top_level():
    path = os.path.join(MODULE_DIR, "VoxelOptRegistration.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    classes = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert classes["VoxelOptRegistration"] == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in classes["VoxelOptRegistrationWidget"]
    assert classes["VoxelOptRegistrationLogic"] == ["RegistrationLogic", "ScriptedLoadableModuleLogic"]
    assert classes["VoxelOptRegistrationTest"] == ["ScriptedLoadableModuleTest"]
    for relative in module_python_files():
        tree = ast.parse(open(os.path.join(MODULE_DIR, relative), encoding="utf-8").read())
        for node in tree.body:  # module level only: torch and the compute modules are imported lazily
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] != "torch", relative
                assert name.split(".")[0] != "voxelopt" or name in LIGHT_ENGINE_MODULES, f"{relative}: imports {name}"


def test_the_widget_asks_for_an_automatic_rerun_after_each_run():
    """A change made while the engine runs starts no run (the widget is busy): once the results are
    written, the widget asks the logic again whether an automatic re-run is due (the decision,
    ``RegistrationLogic.autoUpdateDue``, is tested on slicer-core in test_scene_integrity.py), as it
    does on every parameter change, and starts the auto-update timer."""
    path = os.path.join(MODULE_DIR, "VoxelOptRegistration.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    methods = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}

    def calls(method):
        return sorted((node.lineno, ast.unparse(node.func)) for node in ast.walk(methods[method]) if isinstance(node, ast.Call))

    poll = calls("onPollWorker")
    applied = [line for line, name in poll if name == "self.logic.applyParameterNode"]
    due = [line for line, name in poll if name == "self.logic.autoUpdateDue"]
    timer = [line for line, name in poll if name == "self._autoTimer.start"]
    assert applied and due and timer and applied[0] < due[0] < timer[0]
    assert "self.logic.autoUpdateDue" in [name for _, name in calls("onParameterNodeModified")]


def test_bridge_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.path[:0] = [%r, %r]; import VoxelOptRegistrationLib, VoxelOptRegistrationLib.parameters; "
        "print('torch' in sys.modules)" % (MODULE_DIR, os.path.join(REPO, "VoxelOptLib", "src"))
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cmake_lists_every_module_file_and_resource():
    text = open(os.path.join(MODULE_DIR, "CMakeLists.txt"), encoding="utf-8").read().replace("${MODULE_NAME}", "VoxelOptRegistration")
    listed_scripts = {f for f in re.findall(r"^\s+(\S+\.py)\s*$", text, re.M) if "${" not in f}
    assert listed_scripts == set(module_python_files())
    resources = []
    for folder, _, files in os.walk(os.path.join(MODULE_DIR, "Resources")):
        resources += [os.path.relpath(os.path.join(folder, f), MODULE_DIR) for f in files]
    listed_resources = set(re.findall(r"^\s+(Resources/\S+)\s*$", text, re.M))
    assert listed_resources == set(resources)
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    # The engine is embedded from VoxelOptLib/src into the same scripted-modules directory.
    assert "VoxelOptLib/src" in text and "ctkMacroCompilePythonScript" in text and "Slicer_QTSCRIPTEDMODULES_LIB_DIR" in text
    assert os.path.isfile(os.path.join(REPO, "VoxelOptLib", "src", "voxelopt", "__init__.py"))


def test_extension_cmake_metadata():
    text = open(os.path.join(REPO, "CMakeLists.txt"), encoding="utf-8").read()
    meta = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), f"{key} missing"
    assert meta["EXTENSION_CATEGORY"] == "Registration"
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    assert "add_subdirectory(VoxelOptSlicer)" in text
    assert "find_package(Slicer REQUIRED)" in text and "Slicer_EXTENSION_CPACK" in text
    # The icon and screenshots the metadata points at exist in the repository.
    for url in [meta["EXTENSION_ICONURL"]] + meta["EXTENSION_SCREENSHOTURLS"].split():
        relative = url.split("/main/", 1)[1]
        assert os.path.isfile(os.path.join(REPO, relative)), relative
