"""VoxelOpt Registration: a 3D Slicer scripted module for VoxelOpt deformable CT registration.

Three layers, arrows one way:

* the ``voxelopt`` engine (torch/numpy/SimpleITK, shipped inside this extension);
* ``VoxelOptRegistrationLib`` (MRML nodes in and out; headless-safe, tested with slicer-core);
* this file: the module description, a thin Qt widget bound to the parameter node, the Logic
  class Slicer expects (the bridge's logic with Slicer's base class) and the self-test.

Batch use, from Slicer's Python console or ``Slicer --no-main-window --python-script``::

    import VoxelOptRegistration, voxelopt
    logic = VoxelOptRegistration.VoxelOptRegistrationLogic()
    run = logic.process(fixedNode, movingNode, voxelopt.RegistrationConfig.preset("fast"))
"""

import logging
import time
from typing import Any, Dict, Optional

import ctk
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VoxelOptRegistrationLib import RegistrationLogic, parameters
from VoxelOptRegistrationLib import dependencies


class VoxelOptRegistration(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxelOpt Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []  # PyTorchUtils is imported lazily, only to install torch
        self.parent.contributors = ["SlicerVoxelOpt developers"]
        self.parent.helpText = _(
            "Deformable registration of CT volumes with VoxelOpt (voxel-adaptive message passing over a "
            "discrete displacement search). Produces a displacement field as a grid transform (resampling, "
            "FromParent direction: fixed to moving points) that warps the moving volume live, the warped "
            "volume, an entropy map (registration confidence) and a Jacobian determinant map (folding in "
            "green). Choose a preset, press Apply; tune parameters in Advanced with 'Update automatically'."
        )
        self.parent.acknowledgementText = _(
            "VoxelOpt method: voxel-adaptive message passing for discrete deformable registration. "
            "Module structure follows Slicer's scripted module template."
        )


# ---------------------------------------------------------------------------------------- Logic
class VoxelOptRegistrationLogic(RegistrationLogic, ScriptedLoadableModuleLogic):
    """All computation, usable without the widget: see ``VoxelOptRegistrationLib.logic.RegistrationLogic``."""

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        RegistrationLogic.__init__(self, scene)


# ---------------------------------------------------------------------------------------- Widget
class VoxelOptRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: binds the .ui widgets to the parameter node (``SlicerParameterName``) and runs the Logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[VoxelOptRegistrationLogic] = None
        self._parameterNode = None
        self._boundWidgets: Dict[str, Any] = {}
        self._updatingGUI = False
        self._running = False
        self._cancelRequested = False
        self._lastRunKey = None
        self._autoTimer = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoxelOptRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VoxelOptRegistrationLogic()

        self._bindWidgets(uiWidget)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateDeviceLabel)
        self.ui.progressBar.setVisible(False)
        self._autoTimer = qt.QTimer()
        self._autoTimer.setSingleShot(True)
        self._autoTimer.setInterval(400)  # debounce: wait until the user stops changing values
        self._autoTimer.connect("timeout()", self.onAutoUpdate)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateDeviceLabel()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        for name in ("fixedVolume", "movingVolume"):
            if node.GetNodeReference(name) is None:
                first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
                if first is not None and name == "fixedVolume":
                    node.SetNodeReferenceID(name, first.GetID())
        self.setParameterNode(node)

    def setParameterNode(self, node) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.updateGUIFromParameterNode()

    # ---------------------------------------------------------------- binding (no logic here)
    def _bindWidgets(self, root) -> None:
        """Connect every widget that has a ``SlicerParameterName`` to the parameter node."""
        for widget in slicer.util.findChildren(root):
            name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
            if not name:
                continue
            if name not in parameters.PARAMETER_NAMES:
                raise ValueError(f"widget {widget.objectName} is bound to unknown parameter {name!r}")
            self._boundWidgets[name] = widget
            onChange = lambda *args, n=name: self.updateParameterNodeFromGUI(n)  # noqa: E731
            if isinstance(widget, slicer.qMRMLNodeComboBox):
                widget.connect("currentNodeChanged(vtkMRMLNode*)", onChange)
            elif isinstance(widget, qt.QCheckBox):
                widget.connect("toggled(bool)", onChange)
            elif isinstance(widget, (qt.QSpinBox, qt.QDoubleSpinBox, ctk.ctkSliderWidget)):
                widget.connect("valueChanged(double)" if not isinstance(widget, qt.QSpinBox) else "valueChanged(int)", onChange)
            elif isinstance(widget, qt.QComboBox):
                widget.connect("currentTextChanged(QString)", onChange)
            elif isinstance(widget, qt.QLineEdit):
                widget.connect("editingFinished()", onChange)
            else:
                raise TypeError(f"no binding for widget {widget.objectName} ({widget.className()})")

    def _widgetValue(self, widget):
        if isinstance(widget, slicer.qMRMLNodeComboBox):
            return widget.currentNode()
        if isinstance(widget, qt.QCheckBox):
            return bool(widget.checked)
        if isinstance(widget, qt.QSpinBox):
            return int(widget.value)
        if isinstance(widget, (qt.QDoubleSpinBox, ctk.ctkSliderWidget)):
            return float(widget.value)
        if isinstance(widget, qt.QComboBox):
            return widget.currentText
        return widget.text

    def _setWidgetValue(self, widget, value) -> None:
        if isinstance(widget, slicer.qMRMLNodeComboBox):
            widget.setCurrentNode(value)
        elif isinstance(widget, qt.QCheckBox):
            widget.checked = bool(value)
        elif isinstance(widget, (qt.QSpinBox, qt.QDoubleSpinBox, ctk.ctkSliderWidget)):
            widget.value = value
        elif isinstance(widget, qt.QComboBox):
            index = widget.findText(value)
            if index < 0 and widget.editable:
                widget.setEditText(value)
            else:
                widget.setCurrentIndex(max(index, 0))
        else:
            widget.text = value

    def updateGUIFromParameterNode(self) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            values = parameters.get_values(self._parameterNode)
            for name, widget in self._boundWidgets.items():
                wasBlocked = widget.blockSignals(True)
                if name in parameters.NODE_BY_NAME:
                    self._setWidgetValue(widget, self._parameterNode.GetNodeReference(name))
                else:
                    self._setWidgetValue(widget, values[name])
                widget.blockSignals(wasBlocked)
        finally:
            self._updatingGUI = False
        self.updateApplyButton()

    def updateParameterNodeFromGUI(self, name: str) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        value = self._widgetValue(self._boundWidgets[name])
        if name in parameters.NODE_BY_NAME:
            parameters.set_node(self._parameterNode, name, value)
        else:
            parameters.set_value(self._parameterNode, name, value)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateGUIFromParameterNode()
        if self._running or self._parameterNode is None:
            return
        if self.logic.lastRun is not None:
            self.logic.showOverlay(self._parameterNode)  # overlay/opacity changes apply at once
        if parameters.get_value(self._parameterNode, "autoUpdate") and self._lastRunKey is not None:
            if self.logic.registrationInputsKey(self._parameterNode) != self._lastRunKey:
                self._autoTimer.start()

    def updateApplyButton(self) -> None:
        node = self._parameterNode
        ready = node is not None and node.GetNodeReference("fixedVolume") and node.GetNodeReference("movingVolume")
        if self._running:
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.enabled = bool(ready)
        self.ui.applyButton.toolTip = _("Run the registration.") if ready else _("Select fixed and moving volumes.")

    def updateDeviceLabel(self, *args) -> None:
        self.ui.deviceLabel.text = dependencies.describe_device(self.ui.deviceComboBox.currentText)

    def onPresetChosen(self, index: int) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not apply the preset."), waitCursor=True):
            self.logic.applyPreset(self._parameterNode, self.ui.presetComboBox.itemText(index))

    # ---------------------------------------------------------------- running
    def onApplyButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.applyButton.text = _("Cancelling...")
            return
        if not dependencies.torch_installed():
            confirm = lambda message: slicer.util.confirmOkCancelDisplay(message, _("VoxelOpt needs PyTorch"))  # noqa: E731
            with slicer.util.tryWithErrorDisplay(_("Failed to install PyTorch."), waitCursor=True):
                if not dependencies.install_torch(confirm, log=logging.info):
                    slicer.util.warningDisplay(dependencies.TORCH_MISSING_MESSAGE)
                    return
            self.updateDeviceLabel()
        self.runRegistration()

    def onAutoUpdate(self) -> None:
        if not self._running and self._parameterNode is not None and dependencies.torch_installed():
            self.runRegistration()

    def runRegistration(self) -> None:
        self._running = True
        self._cancelRequested = False
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.resultsTextEdit.setPlainText(_("Running..."))
        key = self.logic.registrationInputsKey(self._parameterNode)
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                try:
                    run = self.logic.processParameterNode(self._parameterNode, progress=self.onProgress, cancel=self.isCancelRequested)
                except Exception as error:
                    if type(error).__name__ == "RegistrationCancelled":
                        self.ui.resultsTextEdit.setPlainText(_("Cancelled: the scene is unchanged."))
                        return
                    self.ui.resultsTextEdit.setPlainText(str(error))
                    raise
                self._lastRunKey = key
                self.ui.resultsTextEdit.setPlainText(run.summary())
        finally:
            self._running = False
            self.ui.applyButton.text = _("Apply")
            self.ui.progressBar.setVisible(False)
            self.updateApplyButton()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.setFormat(f"{message} (%p%)")
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked between steps

    def isCancelRequested(self) -> bool:
        slicer.app.processEvents()
        return self._cancelRequested


# ---------------------------------------------------------------------------------------- Test
class VoxelOptRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test run inside desktop Slicer: volumes are built in code (nothing downloaded)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_VoxelOptRegistration_phantom()
        self.setUp()
        self.test_VoxelOptRegistration_parameterNode()

    def test_VoxelOptRegistration_phantom(self) -> None:
        from VoxelOptRegistrationLib import phantom_nodes, volumes

        self.delayDisplay("Building an abdominal CT phantom pair (oblique)")
        nodes = phantom_nodes.add_phantom_volumes(slicer.mrmlScene, with_segmentations=True)
        if not dependencies.torch_installed():
            self.delayDisplay("PyTorch is not installed: registration part skipped")
            return
        import voxelopt

        logic = VoxelOptRegistrationLogic()
        start = time.time()
        run = logic.process(
            nodes["fixed"],
            nodes["moving"],
            voxelopt.RegistrationConfig.preset("fast", levels=2, feature_spacing=5.0),
            fixedSegmentation=nodes["fixed_segmentation"],
            movingSegmentation=nodes["moving_segmentation"],
        )
        self.delayDisplay(f"Registered in {time.time() - start:.1f} s\n{run.summary()}")
        self.assertTrue(run.transform.IsA("vtkMRMLGridTransformNode"))
        self.assertIs(nodes["moving"].GetParentTransformNode(), run.transform)
        self.assertEqual(run.transform.GetTransformFromParent().GetInverseFlag(), 0)
        for node in (run.warpedVolume, run.entropyVolume, run.jacobianVolume):
            self.assertTrue(volumes.same_geometry(node, nodes["fixed"]))
        self.assertGreater(run.dice["liver"], 0.6)
        self.assertLess(run.metrics["folding_percent"], 5.0)
        # Re-run with a solver parameter changed: the features come from the cache.
        rerun = logic.process(nodes["fixed"], nodes["moving"], run.config.replace(alpha=2.0))
        self.assertTrue(rerun.featureCacheHit)
        self.delayDisplay("Test passed")

    def test_VoxelOptRegistration_parameterNode(self) -> None:
        logic = VoxelOptRegistrationLogic()
        node = logic.getParameterNode()
        self.assertIs(node, logic.getParameterNode())
        parameters.set_value(node, "alpha", 2.5)
        self.assertEqual(parameters.get_value(node, "alpha"), 2.5)
        if dependencies.torch_installed():
            import voxelopt

            logic.applyPreset(node, "fast")
            self.assertEqual(logic.configFromParameterNode(node), voxelopt.RegistrationConfig.preset("fast"))
        self.delayDisplay("Parameter node test passed")
