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

import importlib
import logging
import sys
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
from VoxelOptRegistrationLib import dependencies, transforms
from VoxelOptRegistrationLib.errors import WeightsDownloadRequired, message_for_gui
from VoxelOptRegistrationLib.worker import EngineWorker

#: Where the documentation lives (a file of the repository named in the top-level CMakeLists.txt).
DOCUMENTATION_URL = "https://github.com/SlicerVoxelOpt/SlicerVoxelOpt/blob/main/README.md"
PAPER_CITATION = (
    "Zhang H., Zhang Y., Wang J., Chen X., Hu R., Tian X., Li G., Liu M.: VoxelOpt: Voxel-Adaptive Message "
    "Passing for Discrete Optimization in Deformable Abdominal CT Registration. MICCAI 2025."
)


class VoxelOptRegistration(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxelOpt Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []  # PyTorchUtils is imported lazily, only to install torch
        self.parent.contributors = ["SlicerVoxelOpt developers (SlicerVoxelOpt project)"]
        self.parent.helpText = _(
            "Deformable registration of CT volumes with VoxelOpt (voxel-adaptive message passing over a "
            "discrete displacement search). Produces a displacement field as a grid transform (resampling, "
            "FromParent direction: fixed to moving points) that warps the moving volume live, the warped "
            "volume, an entropy map (registration confidence) and a Jacobian determinant map (folding in "
            "green). Choose a preset, press Apply; tune parameters in Advanced with 'Update automatically'. "
            "Documentation: "
        ) + f'<a href="{DOCUMENTATION_URL}">{DOCUMENTATION_URL}</a>'
        self.parent.acknowledgementText = _(
            "If you use this module, please cite the VoxelOpt paper: "
        ) + PAPER_CITATION + _(" Module structure follows Slicer's scripted module template.")
        # Grid transforms reload as cubic from ITK files: restore the stored linear interpolation.
        slicer.app.connect("startupCompleted()", lambda: transforms.observe_scene_loading(slicer.mrmlScene))


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
        self._worker: Optional[EngineWorker] = None
        self._request = None
        self._runKey = None
        self._lastRunKey = None
        self._shownOverlay = None
        self._autoTimer = None
        self._pollTimer = None

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
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)  # progress and Cancel checked 10 times a second
        self._pollTimer.connect("timeout()", self.onPollWorker)
        self.ui.inverseButton.connect("clicked(bool)", self.onInverseButton)
        self.ui.warpButton.connect("clicked(bool)", self.onWarpButton)
        self.ui.checkerboardButton.connect("clicked(bool)", self.onCheckerboardButton)
        self.ui.differenceButton.connect("clicked(bool)", self.onDifferenceButton)
        self.ui.loadUserPresetButton.connect("clicked(bool)", self.onLoadUserPreset)
        self.ui.saveUserPresetButton.connect("clicked(bool)", self.onSaveUserPreset)
        self.ui.deleteUserPresetButton.connect("clicked(bool)", self.onDeleteUserPreset)
        self.updateUserPresetList()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateDeviceLabel()

    def cleanup(self) -> None:
        self.removeObservers()
        self.stopWorker()

    def onReload(self) -> None:
        """Developer "Reload": reload the helper package too (Slicer reloads only this file)."""
        self.stopWorker()
        for name in sorted(n for n in sys.modules if n.startswith("VoxelOptRegistrationLib.")):
            importlib.reload(sys.modules[name])
        importlib.reload(sys.modules["VoxelOptRegistrationLib"])
        ScriptedLoadableModuleWidget.onReload(self)

    @property
    def _running(self) -> bool:
        return self._worker is not None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.stopWorker()  # its results belong to the closing scene
        self.logic.clearCaches()  # and so do the cached copies and features
        self.setParameterNode(None)
        self._lastRunKey = self._shownOverlay = None

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
            values = parameters.readable_values(self._parameterNode)  # an unreadable one: Apply reports it
            for name, widget in self._boundWidgets.items():
                wasBlocked = widget.blockSignals(True)
                if name in parameters.NODE_BY_NAME:
                    self._setWidgetValue(widget, self._parameterNode.GetNodeReference(name))
                elif name in values:
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
        values = parameters.readable_values(self._parameterNode)
        overlay = (values.get("overlay"), values.get("overlayOpacity"))
        if self.logic.lastRun is not None and overlay != self._shownOverlay:
            try:
                self.logic.showOverlay(self._parameterNode)  # the foreground layer only: views keep zoom and slice
            except ValueError as error:  # a bad overlay or opacity: say so, keep what is shown
                self.ui.resultsTextEdit.setPlainText(message_for_gui(error))
            self._shownOverlay = overlay
        if self.logic.autoUpdateDue(self._parameterNode, self._lastRunKey):
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
            self._worker.cancel()
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
        """Read the inputs here, run the engine on a worker thread, write the results in :meth:`onPollWorker`."""
        self._runKey = self.logic.registrationInputsKey(self._parameterNode)
        try:
            try:
                self._request = self.logic.prepareParameterNode(self._parameterNode)
            except WeightsDownloadRequired as needed:  # never download behind the user's back
                question = _("Download the network weights {files} into {folder}?\nFrom: {urls}").format(
                    files=", ".join(needed.files), folder=needed.directory, urls=", ".join(needed.urls))
                if not slicer.util.confirmOkCancelDisplay(question, _("VoxelOpt network weights")):
                    self.ui.resultsTextEdit.setPlainText(message_for_gui(needed))
                    return
                self._request = self.logic.prepareParameterNode(self._parameterNode, allowWeightsDownload=True)
        except Exception as error:
            self.showError(error)
            return
        inputs, logic = self._request.engineInputs, self.logic
        self._worker = EngineWorker(lambda progress, cancel: logic.compute(inputs, progress, cancel)).start()
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.resultsTextEdit.setPlainText(_("Running..."))
        self._pollTimer.start()

    def onPollWorker(self) -> None:
        """Main thread, every 100 ms: show the progress; when the engine is done, write the results."""
        worker = self._worker
        if worker is None:
            return
        fraction, message = worker.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.setFormat(f"{message} (%p%)")
        if not worker.done:
            return
        self._pollTimer.stop()
        self._worker, request = None, self._request
        self._request = None
        try:
            if worker.error is not None:
                raise worker.error
            # the nodes are written on this thread (0.2-0.4 s at native CT size): say so before
            # the GUI stops painting, rather than leave the engine's last message up
            self.ui.progressBar.setFormat(_("Writing the results into the scene...") + " (%p%)")
            slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)
            run = self.logic.applyParameterNode(self._parameterNode, request, worker.result)
            self._lastRunKey = self._runKey
            values = parameters.get_values(self._parameterNode)
            self._shownOverlay = (values["overlay"], values["overlayOpacity"])
            self.ui.resultsTextEdit.setPlainText(run.summary())
            if self.logic.autoUpdateDue(self._parameterNode, self._lastRunKey):
                self._autoTimer.start()  # changed while the engine ran (those changes started no run)
        except Exception as error:
            if type(error).__name__ == "RegistrationCancelled":
                self.ui.resultsTextEdit.setPlainText(_("Cancelled: the scene is unchanged."))
            else:
                self.showError(error)
        finally:
            self.ui.applyButton.text = _("Apply")
            self.ui.progressBar.setVisible(False)
            self.updateApplyButton()

    def stopWorker(self) -> None:
        """Cancel a running engine and drop its result (scene closing, module reloading)."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = self._request = None
            if self._pollTimer is not None:
                self._pollTimer.stop()

    def showError(self, error: Exception) -> None:
        text = message_for_gui(error)
        self.ui.resultsTextEdit.setPlainText(text)
        logging.error(text)
        slicer.util.errorDisplay(_("Registration failed: ") + text)

    # ---------------------------------------------------------------- using the result
    def _resultNodes(self):
        node = self._parameterNode
        transform = node.GetNodeReference("outputTransform") if node is not None else None
        if transform is None:
            raise ValueError(_("Run the registration first (there is no output transform)."))
        return transform, node.GetNodeReference("fixedVolume"), node.GetNodeReference("outputVolume")

    def onInverseButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not create the inverse transform."), waitCursor=True):
            transform, _fixed, _warped = self._resultNodes()
            inverse = self.logic.createInverseTransform(transform)
            self.ui.resultsTextEdit.appendPlainText(_("Created inverse transform: ") + inverse.GetName())

    def onWarpButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not warp the node."), waitCursor=True):
            transform, fixed, _warped = self._resultNodes()
            node = self.ui.warpNodeSelector.currentNode()
            if node is None:
                raise ValueError(_("Choose a node to warp."))
            (warped,) = self.logic.warpNodes(transform, [node], fixed)
            self.ui.resultsTextEdit.appendPlainText(_("Warped into the fixed space: ") + warped.GetName())

    @staticmethod
    def _requireWarped(warped) -> None:
        if warped is None:
            raise ValueError(_("There is no warped volume: tick 'Warped volume' and run the registration again."))

    def onCheckerboardButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not create the checkerboard."), waitCursor=True):
            _transform, fixed, warped = self._resultNodes()
            self._requireWarped(warped)
            slicer.util.setSliceViewerLayers(background=self.logic.createCheckerboard(fixed, warped), foreground=None)

    def onDifferenceButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not create the difference."), waitCursor=True):
            _transform, fixed, warped = self._resultNodes()
            self._requireWarped(warped)
            slicer.util.setSliceViewerLayers(background=self.logic.createDifference(fixed, warped), foreground=None)

    # ---------------------------------------------------------------- user presets
    def updateUserPresetList(self) -> None:
        combo = self.ui.userPresetComboBox
        current = combo.currentText
        combo.clear()
        combo.addItems(self.logic.presetStore.names())
        combo.setEditText(current)

    def onSaveUserPreset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not save the preset.")):
            self.logic.saveUserPreset(self._parameterNode, self.ui.userPresetComboBox.currentText.strip())
            self.updateUserPresetList()

    def onLoadUserPreset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not load the preset.")):
            self.logic.loadUserPreset(self._parameterNode, self.ui.userPresetComboBox.currentText.strip())

    def onDeleteUserPreset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not delete the preset.")):
            self.logic.presetStore.delete(self.ui.userPresetComboBox.currentText.strip())
            self.updateUserPresetList()


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
        # Apply again with the same inputs (the moving volume is now under the transform): same Dice.
        from VoxelOptRegistrationLib import RegistrationOutputs

        outputs = RegistrationOutputs(run.transform, run.warpedVolume, run.entropyVolume, run.jacobianVolume,
                                      run.warpedSegmentation, run.diceTable)
        again = logic.process(nodes["fixed"], nodes["moving"], run.config, fixedSegmentation=nodes["fixed_segmentation"],
                              movingSegmentation=nodes["moving_segmentation"], outputs=outputs)
        self.assertEqual(again.dice, run.dice)
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
