"""The parameter node: typed values, presets, engine defaults, and a save/reload through an .mrml file."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import slicer
import slicer.util
import vtk
from voxelopt.config import SCHEMA
from VoxelOptRegistrationLib import RegistrationLogic, dependencies, parameters, phantom_nodes, volumes
from VoxelOptRegistrationLib.errors import InputNodeError, MissingDependencyError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_DIR = os.path.join(REPO, "VoxelOptSlicer")
ENGINE_DIR = os.path.join(REPO, "VoxelOptLib", "src")


def test_values_are_typed_and_round_trip(scene):
    node = RegistrationLogic(scene).getParameterNode()
    assert parameters.get_values(node) == {p.name: p.default for p in parameters.VALUE_PARAMETERS}
    parameters.set_values(node, {"alpha": 2.25, "levels": 3, "adaptive": False, "thetas": "50, 5", "device": "cpu"})
    values = parameters.get_values(node)
    assert values["alpha"] == 2.25 and isinstance(values["alpha"], float)
    assert values["levels"] == 3 and isinstance(values["levels"], int)
    assert values["adaptive"] is False
    assert values["thetas"] == "50, 5" and values["device"] == "cpu"
    with pytest.raises(TypeError, match="levels must be an integer"):
        parameters.set_value(node, "levels", 2.5)
    with pytest.raises(TypeError, match="adaptive must be True or False"):
        parameters.set_value(node, "adaptive", 1)
    with pytest.raises(KeyError):
        parameters.set_values(node, {"alpah": 1.0})
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    with pytest.raises(TypeError, match="vtkMRMLScalarVolumeNode"):
        parameters.set_node(node, "fixedVolume", transform)


@pytest.mark.parametrize("name, text, words", [("levels", "abc", "a whole number"), ("levels", "2.7", "a whole number"),
                                                ("alpha", "2,5", "a number"), ("adaptive", "maybe", "true or false"),
                                                ("refineIterations", "ten", "a whole number")])
def test_an_unreadable_stored_value_is_an_error_naming_it(scene, name, text, words):
    """A value whose stored text (a script's SetParameter, an edited .mrml) is not of its type is an
    error naming the parameter and the text, not silently the default; the GUI still shows the others."""
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    node.SetParameter(name, text)
    match = f"parameter '{name}' of the VoxelOptRegistration parameter node holds '{re.escape(text)}', which is not {words}"
    with pytest.raises(InputNodeError, match=match):
        parameters.get_value(node, name)
    with pytest.raises(InputNodeError, match=match):
        logic.configFromParameterNode(node)
    with pytest.raises(InputNodeError, match=match):
        logic.prepareParameterNode(node)
    readable = parameters.readable_values(node)
    assert name not in readable and len(readable) == len(parameters.VALUE_PARAMETERS) - 1
    key = logic.registrationInputsKey(node)  # no error: a changed key, and the run reports the value
    node.UnsetParameter(name)  # absent: the default, as for a parameter added after the scene was saved
    assert parameters.get_value(node, name) == parameters.VALUE_BY_NAME[name].default
    assert logic.registrationInputsKey(node) != key


@pytest.mark.parametrize("name", ["thetas", "features", "init", "device", "levels", "alpha"])
def test_an_emptied_value_is_an_error_not_the_default(scene, name):
    """A value the node holds as empty text (a cleared field, a script's SetParameter(name, "")) is
    refused by name: taking the default in its place would run other settings than those shown."""
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    logic.applyPreset(node, "fast")
    node.SetParameter(name, " ")
    match = f"parameter '{name}' of the VoxelOptRegistration parameter node is empty; set it again"
    with pytest.raises(InputNodeError, match=match):
        logic.configFromParameterNode(node)
    with pytest.raises(InputNodeError, match=match):
        logic.prepareParameterNode(node)
    assert name not in parameters.readable_values(node)  # the GUI shows the others


def test_a_negative_spacing_is_refused_not_read_as_none(scene):
    import voxelopt

    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_value(node, "featureSpacing", -2.0)
    with pytest.raises(voxelopt.ConfigError, match="featureSpacing is -2; give a positive value, or 0 for none"):
        logic.configFromParameterNode(node)
    parameters.set_value(node, "featureSpacing", 0.0)  # 0: the fixed volume's own grid
    assert logic.configFromParameterNode(node).feature_spacing is None


def test_readable_stored_values_are_read(scene):
    node = RegistrationLogic(scene).getParameterNode()
    for name, text, value in (("levels", "3.0", 3), ("adaptive", " False ", False), ("adaptive", "on", True),
                              ("alpha", " 2.5", 2.5), ("alpha", "1e-1", 0.1)):
        node.SetParameter(name, text)
        assert parameters.get_value(node, name) == value


def test_a_bad_display_value_is_refused_before_the_registration(scene, monkeypatch):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(10, 9, 8))
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    monkeypatch.setattr(RegistrationLogic, "prepare", lambda *args, **kwargs: pytest.fail("read the inputs"))
    monkeypatch.setattr(RegistrationLogic, "compute", lambda *args, **kwargs: pytest.fail("ran the registration"))
    node.SetParameter("overlayOpacity", "7")
    message = r"parameter 'overlayOpacity' of parameter node 'VoxelOptRegistration' must be a number in \[0, 1\], got 7.0"
    with pytest.raises(InputNodeError, match=message):
        logic.processParameterNode(node)
    with pytest.raises(InputNodeError, match=message):
        logic.showOverlay(node)
    parameters.set_values(node, {"overlayOpacity": 0.5, "overlay": "bogus"})
    message = "parameter 'overlay' of parameter node 'VoxelOptRegistration' must be one of entropy, jacobian, warped, none, got 'bogus'"
    with pytest.raises(InputNodeError, match=message):
        logic.processParameterNode(node)
    with pytest.raises(ValueError, match=message):  # not a KeyError
        logic.showOverlay(node)
    parameters.set_value(node, "overlay", "jacobian")
    assert logic.showOverlay(node) == 0  # no slice view in this scene


def test_parameter_node_is_a_scene_singleton(scene):
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    assert node is RegistrationLogic(scene).getParameterNode()
    assert node.GetAttribute("ModuleName") == parameters.MODULE_NAME
    assert scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1


def test_defaults_are_the_engine_default_preset_and_presets_round_trip(scene):
    import voxelopt

    default = parameters.values_from_config_dict(voxelopt.RegistrationConfig.preset(voxelopt.config.DEFAULT_PRESET).to_dict())
    defaults = {p.name: p.default for p in parameters.VALUE_PARAMETERS}
    assert default == {name: defaults[name] for name in default}
    assert defaults["preset"] == voxelopt.config.DEFAULT_PRESET
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    assert set(parameters.PRESET_CHOICES) == set(voxelopt.PRESETS)
    for name in parameters.PRESET_CHOICES:
        logic.applyPreset(node, name)
        assert logic.configFromParameterNode(node) == voxelopt.RegistrationConfig.preset(name)
        assert parameters.get_value(node, "preset") == name
    # Every engine parameter can be set from the parameter node (except the weights path).
    mapped = {p.config_field for p in parameters.VALUE_PARAMETERS if p.config_field}
    assert set(SCHEMA) - mapped == set(parameters.NOT_IN_GUI) == {"weights"}


def test_engine_values_are_derived_from_the_engine_schema():
    for parameter in parameters.ENGINE_PARAMETERS:
        spec = SCHEMA[parameter.config_field]
        assert spec.description() in parameter.doc
        assert parameter.choices == spec.choices
        if spec.shape == "scalar":
            assert parameter.name.lower() == spec.name.replace("_", "") and parameter.kind is spec.type
            assert parameter.default == (0.0 if spec.default is None else spec.default)
        elif spec.shape == "pair":
            assert parameter.kind is float and parameter.default == spec.default[parameter.element]
        else:
            assert parameters.parse_thetas(parameter.default) == spec.default
    # a changed value of every engine parameter reaches the configuration
    import voxelopt

    changed = {"features": "raw", "huLow": -200.0, "huHigh": 300.0, "mindRadius": 1, "mindDilation": 3,
               "featureSpacing": 0.0, "workingScale": 0.25, "levels": 3, "k": 2, "kFinest": 1, "beta": 4.0, "sigmaMode": "code",
               "alpha": 2.0, "sigmaLow": 0.2, "sigmaHigh": 0.7, "adaptive": False, "fixedSigma": 0.9,
               "filterCost": False, "smoothingPasses": 2, "thetas": "50, 5", "ssSteps": 4, "refineIterations": 10,
               "refineWeight": 2.0, "init": "com", "device": "cpu", "paddingMask": False, "searchFraction": 0.5,
               "refineScale": 0.25}
    assert set(changed) == {p.name for p in parameters.ENGINE_PARAMETERS}
    config = voxelopt.RegistrationConfig(**parameters.config_values(changed))
    default = voxelopt.RegistrationConfig()
    assert all(getattr(config, name) != getattr(default, name) for name in SCHEMA if name not in parameters.NOT_IN_GUI)
    assert config.feature_spacing is None and config.hu_window == (-200.0, 300.0) and config.thetas == (50.0, 5.0)
    assert parameters.values_from_config_dict(config.to_dict()) == changed


def test_presets_and_parameter_values_need_neither_torch_nor_simpleitk():
    """What opening the module does (parameter node, presets, the device label) works without torch."""
    code = """
import sys
sys.modules["torch"] = None  # as if PyTorch were not installed: "import torch" raises ImportError
sys.path[:0] = [%r, %r]
import slicer
import slicer.util
import vtk
from VoxelOptRegistrationLib import RegistrationLogic, dependencies, parameters
scene = slicer.vtkMRMLScene()
logic = RegistrationLogic(scene)
node = logic.getParameterNode()
parameters.set_value(node, "featureSpacing", 5.0)
logic.applyPreset(node, "fast")  # a preset sets every parameter: its own values and the defaults
assert parameters.get_value(node, "featureSpacing") == 2.0 and parameters.get_value(node, "thetas") == "50, 5, 0.5"
print(logic.configFromParameterNode(node).levels, dependencies.describe_device("auto"))
print(sorted(name for name in ("torch", "SimpleITK") if sys.modules.get(name) is not None))
""" % (MODULE_DIR, ENGINE_DIR)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "4 PyTorch not installed" and lines[-1] == "[]"


@pytest.mark.parametrize(
    "torch_version, numpy_version, message",
    [
        ("1.13.1", "1.26.4", "needs PyTorch 2.0 or newer; this Slicer has PyTorch 1.13.1"),
        ("2.2.2", "2.0.1", "PyTorch 2.2.2 was built for NumPy 1"),
        ("2.2.2", "1.26.4", None),
        ("2.13.0+cpu", "2.1.0", None),
    ],
)
def test_an_installed_torch_is_checked_before_it_is_imported(monkeypatch, torch_version, numpy_version, message):
    versions = {"torch": torch_version, "numpy": numpy_version}
    monkeypatch.setattr(dependencies, "torch_installed", lambda: True)
    monkeypatch.setattr(dependencies, "_installed_version", versions.get)  # package metadata, as pip reports it
    if message is None:
        assert dependencies.torch_problem() is None
        dependencies.require_torch()
        return
    assert message in dependencies.torch_problem()
    with pytest.raises(MissingDependencyError, match=message.split(";")[0]):
        dependencies.require_torch()
    assert dependencies.describe_device("auto") == "PyTorch unusable (see Apply)"


def test_registration_key_ignores_display_parameters(scene):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(10, 9, 8))
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    key = logic.registrationInputsKey(node)
    parameters.set_values(node, {"overlay": "jacobian", "overlayOpacity": 0.9, "autoUpdate": True})
    assert logic.registrationInputsKey(node) == key
    parameters.set_value(node, "alpha", 3.0)
    key_alpha = logic.registrationInputsKey(node)
    assert key_alpha != key
    arr = volumes.array_from_volume_node(nodes["moving"])
    volumes.set_volume_array(nodes["moving"], arr + 1, *volumes.node_geometry_ras(nodes["moving"]))
    assert logic.registrationInputsKey(node) != key_alpha
    # the initial transform's matrix is an input too: moving it re-runs the registration
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial")
    parameters.set_node(node, "initialTransform", initial)
    key_initial = logic.registrationInputsKey(node)
    shift = np.eye(4)
    shift[0, 3] = 5.0
    initial.SetMatrixTransformFromParent(slicer.util.vtkMatrixFromArray(shift))
    assert logic.registrationInputsKey(node) != key_initial


def test_registration_key_follows_every_edit_of_segments_and_geometry(scene):
    """Edits that change the result change the auto-update key: a segment renamed (matching by
    name) or recoloured (the warped segmentation's colours), a segment's voxels erased in place
    (marked Modified, as the Segment Editor does) or replaced by SetBinaryLabelmapToSegment, and
    a volume's spacing, origin or axes."""
    from vtkmodules.util import numpy_support

    nodes = phantom_nodes.add_phantom_volumes(scene, size=(10, 9, 8), with_segmentations=True)
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    for name, role in (("fixedVolume", "fixed"), ("movingVolume", "moving"), ("fixedSegmentation", "fixed_segmentation"),
                       ("movingSegmentation", "moving_segmentation")):
        parameters.set_node(node, name, nodes[role])
    fixed_segments = nodes["fixed_segmentation"].GetSegmentation()
    moving_segments = nodes["moving_segmentation"].GetSegmentation()
    labelmap = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()

    def erase_in_place():
        layer = fixed_segments.GetNthSegment(1).GetRepresentation(labelmap)
        numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars())[:] = 0
        layer.Modified()

    def erase_by_segmentations_logic():
        segment_id = moving_segments.GetNthSegmentID(2)
        empty = slicer.vtkOrientedImageData()
        empty.DeepCopy(moving_segments.GetSegment(segment_id).GetRepresentation(labelmap))
        numpy_support.vtk_to_numpy(empty.GetPointData().GetScalars())[:] = 0
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            empty, nodes["moving_segmentation"], segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    edits = {
        "rename": lambda: fixed_segments.GetNthSegment(0).SetName("milz"),
        "recolour": lambda: moving_segments.GetNthSegment(0).SetColor(0.0, 1.0, 0.0),
        "erase in place": erase_in_place,
        "SetBinaryLabelmapToSegment": erase_by_segmentations_logic,
        "spacing": lambda: nodes["fixed"].SetSpacing(*(np.array(nodes["fixed"].GetSpacing()) * 1.1)),
        "origin": lambda: nodes["moving"].SetOrigin(*(np.array(nodes["moving"].GetOrigin()) + [10.0, 0.0, 0.0])),
        "axes": lambda: nodes["moving"].SetIJKToRASDirections(1, 0, 0, 0, 1, 0, 0, 0, 1),
    }
    for name, edit in edits.items():
        key = logic.registrationInputsKey(node)
        assert logic.registrationInputsKey(node) == key  # nothing changed: same key
        edit()
        assert logic.registrationInputsKey(node) != key, name


def test_parameter_node_survives_saving_and_reloading_the_scene(scene, tmp_path):
    nodes = phantom_nodes.add_phantom_volumes(scene, size=(14, 12, 10), with_segmentations=True)
    logic = RegistrationLogic(scene)
    node = logic.getParameterNode()
    values = {"preset": "fast", "features": "raw", "alpha": 2.75, "levels": 3, "adaptive": False, "filterCost": False,
              "thetas": "50, 5, 0.5", "k": 2, "ssSteps": 4, "device": "cpu", "overlay": "jacobian", "overlayOpacity": 0.35,
              "autoUpdate": True, "featureSpacing": 3.0}
    parameters.set_values(node, values)
    parameters.set_node(node, "fixedVolume", nodes["fixed"])
    parameters.set_node(node, "movingVolume", nodes["moving"])
    parameters.set_node(node, "movingSegmentation", nodes["moving_segmentation"])
    parameters.set_node(node, "movingMask", nodes["moving_segmentation"])
    initial = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "initial alignment")
    matrix = np.array([[0.0, -1.0, 0.0, 12.5], [1.0, 0.0, 0.0, -4.0], [0.0, 0.0, 1.0, 7.25], [0.0, 0.0, 0.0, 1.0]])
    initial.SetMatrixTransformFromParent(slicer.util.vtkMatrixFromArray(matrix))
    parameters.set_node(node, "initialTransform", initial)
    storage = initial.CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "initial.h5"))
    assert storage.WriteData(initial)
    initial.SetAndObserveStorageNodeID(storage.GetID())
    for name in ("fixed", "moving"):  # volumes with their data, as "Save scene" writes them
        storage = nodes[name].CreateDefaultStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / f"{name}.nrrd"))
        assert storage.WriteData(nodes[name])
        nodes[name].SetAndObserveStorageNodeID(storage.GetID())
    storage = nodes["moving_segmentation"].CreateDefaultStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "moving_seg.seg.nrrd"))
    assert storage.WriteData(nodes["moving_segmentation"])
    nodes["moving_segmentation"].SetAndObserveStorageNodeID(storage.GetID())
    scene_file = str(tmp_path / "scene.mrml")
    scene.SetURL(scene_file)
    assert scene.Commit()

    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(scene_file)
    assert reloaded.Import()
    reloaded_node = RegistrationLogic(reloaded).getParameterNode()  # found, not created
    assert reloaded.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode") == 1
    restored = parameters.get_values(reloaded_node)
    assert {k: restored[k] for k in values} == values
    fixed = parameters.get_node(reloaded_node, "fixedVolume")
    moving = parameters.get_node(reloaded_node, "movingVolume")
    assert fixed.GetName() == "fixed" and moving.GetName() == "moving"
    assert parameters.get_node(reloaded_node, "movingSegmentation").GetName() == "moving segmentation"
    assert parameters.get_node(reloaded_node, "fixedSegmentation") is None
    assert parameters.get_node(reloaded_node, "movingMask").GetName() == "moving segmentation"
    assert parameters.get_node(reloaded_node, "fixedMask") is None
    reloaded_initial = parameters.get_node(reloaded_node, "initialTransform")
    assert reloaded_initial.GetName() == "initial alignment" and reloaded_initial.IsLinear()
    reloaded_matrix = vtk.vtkMatrix4x4()
    reloaded_initial.GetMatrixTransformFromParent(reloaded_matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(reloaded_matrix), matrix, atol=1e-9)
    np.testing.assert_array_equal(volumes.array_from_volume_node(moving), volumes.array_from_volume_node(nodes["moving"]))
    np.testing.assert_allclose(volumes.ijk_to_ras_matrix(fixed), volumes.ijk_to_ras_matrix(nodes["fixed"]), atol=1e-6)
    reloaded.Clear(1)
    assert os.path.exists(scene_file)
