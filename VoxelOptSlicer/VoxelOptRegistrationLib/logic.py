"""The module's Logic: volume nodes and parameters in, MRML result nodes out.

This is also the batch-scripting API (Slicer's Python console, ``Slicer --no-main-window
--python-script``) and runs on headless ``slicer-core``. Example::

    from VoxelOptRegistrationLib import RegistrationLogic
    logic = RegistrationLogic()
    run = logic.process(fixedNode, movingNode, voxelopt.RegistrationConfig.preset("fast"))
    print(run.summary())

What a run produces (all on the fixed volume's voxel grid unless stated):

* ``transform``: a ``vtkMRMLGridTransformNode`` holding the displacement field in the **resampling
  (FromParent)** direction, i.e. it maps fixed-space points to moving-space points (see
  :mod:`.transforms`), with the moving and fixed volumes as its moving/fixed node references.
  With ``showResult`` the moving volume is put under it, so the viewers warp it live.
* ``warpedVolume``: the moving volume resampled onto the fixed grid (float32).
* ``entropyVolume``: entropy of the displacement distribution (nats), inferno colour table.
* ``jacobianVolume``: determinant of the Jacobian of x -> x + u(x), diverging table centred at 1,
  folding (det J <= 0) in green.
* with segmentations: ``warpedSegmentation`` (the moving segments on the fixed grid) and a
  ``diceTable`` comparing it with the fixed segmentation (segments matched by name).

All-or-nothing: inputs are validated before anything is created; a cancelled or failed run leaves
the scene as it was (output nodes created by the run are removed, existing ones are only written
after the engine has finished).
"""

import dataclasses
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import slicer

from . import colors, dependencies, parameters, views
from .errors import InputNodeError

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


@dataclasses.dataclass
class RegistrationOutputs:
    """Existing nodes to overwrite with the results; a None field means "create a new node"."""

    transform: Any = None
    warpedVolume: Any = None
    entropyVolume: Any = None
    jacobianVolume: Any = None
    warpedSegmentation: Any = None
    diceTable: Any = None


@dataclasses.dataclass
class RegistrationRun:
    """What one registration produced: the output nodes and the numbers to report.

    Attributes:
        transform, warpedVolume, entropyVolume, jacobianVolume: output nodes (see the module doc).
        warpedSegmentation, diceTable: output nodes when segmentations were given, else None.
        metrics: the engine's metrics ("sdlogj", "folding_percent", "dice", "dice_mean", ...).
        dice: Dice (0-1) per segment name (empty without both segmentations).
        timings: seconds per stage: the engine's stages plus "slicer_input" and "slicer_output".
        device: the torch device used, e.g. "cpu".
        featureCacheHit: True when the features of both images came from the cache.
        totalSeconds: wall time of the whole run.
        config: the engine configuration used (``voxelopt.RegistrationConfig``).
        createdNodeIDs: IDs of the nodes this run added to the scene.
    """

    transform: Any
    warpedVolume: Any
    entropyVolume: Any
    jacobianVolume: Any
    warpedSegmentation: Any
    diceTable: Any
    metrics: Dict[str, Any]
    dice: Dict[str, float]
    timings: Dict[str, float]
    device: str
    featureCacheHit: bool
    totalSeconds: float
    config: Any
    createdNodeIDs: List[str]

    def summary(self) -> str:
        """A plain-text report for the GUI's results box or a log: timings, SDlogJ, folding, Dice."""
        lines = [f"Device: {self.device}    total: {self.totalSeconds:.2f} s" + ("    (features from cache)" if self.featureCacheHit else "")]
        lines.append("Time per stage: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.timings.items()))
        sdlogj = self.metrics.get("sdlogj")
        folding = self.metrics.get("folding_percent")
        if sdlogj is not None:
            lines.append(f"SDlogJ: {float(sdlogj):.4f}")
        if folding is not None:
            lines.append(f"Folding (det J <= 0): {float(folding):.3f} % of voxels")
        if self.dice:
            lines.append("Dice per segment:")
            for name, value in self.dice.items():
                lines.append(f"  {name}: {value:.3f}")
            mean = self.metrics.get("dice_mean")
            if mean is not None:
                lines.append(f"  mean: {float(mean):.3f}")
        return "\n".join(lines)


class RegistrationLogic:
    """VoxelOpt registration on MRML nodes. Usable without the GUI.

    The logic keeps a ``voxelopt.FeatureCache``: features are cached per image content and feature
    parameters, so a re-run that changes only solver parameters (alpha, beta, thetas, levels, k,
    adaptive, filtering, ...) re-runs only the optimisation.
    """

    def __init__(self, scene=None) -> None:
        """``scene``: the MRML scene to work in (default: ``slicer.mrmlScene`` at call time)."""
        self._scene = scene
        self.featureCache = None
        self.lastRun: Optional[RegistrationRun] = None

    # ------------------------------------------------------------------ scene and parameter node
    @property
    def scene(self):
        """The MRML scene the logic works in."""
        return self._scene if self._scene is not None else slicer.mrmlScene

    def getParameterNode(self):
        """The module's parameter node (a ``vtkMRMLScriptedModuleNode`` singleton), created with defaults if needed."""
        scene = self.scene
        node = scene.GetSingletonNode(parameters.MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # CreateNodeByClass returns a new reference
            node.SetSingletonTag(parameters.MODULE_NAME)
            node.SetName(parameters.MODULE_NAME)
            node.SetAttribute("ModuleName", parameters.MODULE_NAME)
            node = scene.AddNode(node)
        parameters.initialize_defaults(node)
        return node

    def applyPreset(self, parameterNode, name: str) -> None:
        """Write the preset's engine parameters into the parameter node (one Modified event)."""
        import voxelopt

        config = voxelopt.RegistrationConfig.preset(name)
        values = parameters.values_from_config_dict(config.to_dict())
        values["preset"] = name
        parameters.set_values(parameterNode, values)

    def configFromParameterNode(self, parameterNode):
        """The ``voxelopt.RegistrationConfig`` the parameter node describes (raises ConfigError/ValueError)."""
        import voxelopt

        try:
            kwargs = parameters.config_values(parameters.get_values(parameterNode))
        except ValueError as error:
            raise voxelopt.ConfigError(str(error)) from None
        return voxelopt.RegistrationConfig.from_dict({**voxelopt.RegistrationConfig().to_dict(), **kwargs})

    def registrationInputsKey(self, parameterNode) -> Tuple[Any, ...]:
        """A value that changes whenever a parameter or input that affects the registration changes.

        The GUI's "update automatically" re-runs when it differs from the last run's key; display
        parameters (overlay, opacity) are not part of it.
        """
        values = parameters.get_values(parameterNode)
        key = [(name, values[name]) for name in sorted(values) if name not in parameters.DISPLAY_ONLY]
        for p in parameters.NODE_PARAMETERS:
            if not p.output:
                referenced = parameterNode.GetNodeReference(p.name)
                key.append((p.name, referenced.GetID() if referenced else None, _content_mtime(referenced)))
        return tuple(key)

    # ------------------------------------------------------------------ running
    def getFeatureCache(self):
        """The logic's ``voxelopt.FeatureCache`` (created on first use)."""
        if self.featureCache is None:
            import voxelopt

            self.featureCache = voxelopt.FeatureCache()
        return self.featureCache

    def processParameterNode(
        self,
        parameterNode,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
        showResult: bool = True,
    ) -> RegistrationRun:
        """Run with the inputs, outputs and parameters of a parameter node; store the output nodes in it."""
        get = lambda name: parameters.get_node(parameterNode, name)  # noqa: E731
        outputs = RegistrationOutputs(
            transform=get("outputTransform"),
            warpedVolume=get("outputVolume"),
            entropyVolume=get("outputEntropy"),
            jacobianVolume=get("outputJacobian"),
            warpedSegmentation=get("outputSegmentation"),
            diceTable=get("outputDiceTable"),
        )
        values = parameters.get_values(parameterNode)
        config = self.configFromParameterNode(parameterNode)
        run = self.process(
            get("fixedVolume"),
            get("movingVolume"),
            config,
            fixedSegmentation=get("fixedSegmentation"),
            movingSegmentation=get("movingSegmentation"),
            outputs=outputs,
            progress=progress,
            cancel=cancel,
            showResult=showResult,
            overlay=values["overlay"],
            overlayOpacity=values["overlayOpacity"],
        )
        was_modifying = parameterNode.StartModify()
        for name, node in (
            ("outputTransform", run.transform),
            ("outputVolume", run.warpedVolume),
            ("outputEntropy", run.entropyVolume),
            ("outputJacobian", run.jacobianVolume),
            ("outputSegmentation", run.warpedSegmentation),
            ("outputDiceTable", run.diceTable),
        ):
            if node is not None:
                parameters.set_node(parameterNode, name, node)
        parameterNode.EndModify(was_modifying)
        return run

    def process(
        self,
        fixedVolume,
        movingVolume,
        config: Union[None, Mapping[str, Any], Any] = None,
        fixedSegmentation=None,
        movingSegmentation=None,
        outputs: Optional[RegistrationOutputs] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
        showResult: bool = True,
        overlay: str = "entropy",
        overlayOpacity: float = 0.5,
    ) -> RegistrationRun:
        """Register ``movingVolume`` onto ``fixedVolume`` and write the result nodes.

        Args:
            fixedVolume, movingVolume: scalar volume nodes (HU for CT). Their own voxel geometry
                is used; a parent transform is refused, except a VoxelOpt transform on the moving
                volume (a previous run's live warp), which is ignored.
            config: a ``voxelopt.RegistrationConfig``, a dict of its fields, or None ("paper").
            fixedSegmentation, movingSegmentation: optional segmentation nodes; segments are matched
                by name. The moving one gives ``warpedSegmentation``; both give the Dice table.
            outputs: existing nodes to overwrite (None fields: new nodes are created).
            progress: ``progress(fraction 0-1, message)``, called by the engine between steps.
            cancel: ``cancel() -> bool``; when it returns True the engine stops at the next step and
                ``voxelopt.RegistrationCancelled`` is raised, the scene left as it was.
            showResult: put the moving volume under the transform (live warp) and show the fixed
                volume with the ``overlay`` ("entropy", "jacobian", "warped" or "none") in the
                slice views at ``overlayOpacity``; harmless without views.

        Raises:
            InputNodeError: missing/invalid input nodes (NaN, not 3-D, bad geometry, transform).
            MissingDependencyError: torch is not installed.
            voxelopt.InputError, voxelopt.ConfigError: raised by the engine.
            voxelopt.RegistrationCancelled: ``cancel()`` returned True.
        """
        from . import segmentations, transforms, volumes  # SimpleITK: only when a registration runs
        from .volumes import ROLE_ATTRIBUTE

        start = time.perf_counter()
        outputs = outputs or RegistrationOutputs()
        if overlay not in parameters.OVERLAY_CHOICES:
            raise ValueError(f"overlay must be one of {parameters.OVERLAY_CHOICES}, got {overlay!r}")
        if not 0.0 <= overlayOpacity <= 1.0:
            raise ValueError(f"overlayOpacity must be in [0, 1], got {overlayOpacity}")

        # 1. Validate and convert every input before touching the scene.
        fixed_image = volumes.sitk_from_volume_node(fixedVolume, "fixed")
        moving_image = volumes.sitk_from_volume_node(movingVolume, "moving")
        volumes.parent_transform_check(fixedVolume, ignore_roles=())
        volumes.parent_transform_check(movingVolume)
        for role, node in (("fixed", fixedSegmentation), ("moving", movingSegmentation)):
            if node is not None:
                if not node.IsA("vtkMRMLSegmentationNode"):
                    raise InputNodeError(f"{role} segmentation '{node.GetName()}' is a {node.GetClassName()}, not a segmentation")
                volumes.parent_transform_check(node)
        _check_output_classes(outputs)
        dependencies.require_torch()
        import voxelopt

        config = _as_config(voxelopt, config)
        fixed_labels, moving_labels, label_names, label_colors = segmentations.labelmaps_for_registration(
            fixedSegmentation, movingSegmentation, fixedVolume, movingVolume
        )
        input_seconds = time.perf_counter() - start

        # 2. The engine (nothing in the scene has changed so far).
        cache = self.getFeatureCache()
        hits_before, misses_before = getattr(cache, "hits", 0), getattr(cache, "misses", 0)
        result = voxelopt.register(
            fixed_image,
            moving_image,
            config,
            fixed_labels=fixed_labels,
            moving_labels=moving_labels,
            progress=progress,
            cancel=cancel,
            cache=cache,
        )
        cache_hit = getattr(cache, "hits", 0) > hits_before and getattr(cache, "misses", 0) == misses_before

        # 3. Write the outputs, all or nothing.
        output_start = time.perf_counter()
        scene = self.scene
        created: List[Any] = []

        def node_for(existing, class_name: str, name: str, role: str):
            if existing is not None:
                return existing
            node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
            node.SetAttribute(ROLE_ATTRIBUTE, role)
            created.append(node)
            return node

        base = movingVolume.GetName()
        try:
            transform = node_for(outputs.transform, "vtkMRMLGridTransformNode", f"{base} VoxelOpt transform", "transform")
            transform.SetAttribute(ROLE_ATTRIBUTE, "transform")
            transforms.set_field_on_transform_node(transform, result.field, movingVolume, fixedVolume)
            warped = node_for(outputs.warpedVolume, "vtkMRMLScalarVolumeNode", f"{base} warped", "warped")
            _write_on_fixed_grid(warped, result.warped, fixedVolume)
            _copy_window(movingVolume, warped)
            entropy = node_for(outputs.entropyVolume, "vtkMRMLScalarVolumeNode", f"{base} entropy", "entropy")
            _write_on_fixed_grid(entropy, result.entropy, fixedVolume)
            colors.show_entropy(entropy, *_min_max(result.entropy))
            jacobian = node_for(outputs.jacobianVolume, "vtkMRMLScalarVolumeNode", f"{base} Jacobian", "jacobian")
            _write_on_fixed_grid(jacobian, result.jacobian, fixedVolume)
            colors.show_jacobian(jacobian)
            warped_segmentation = dice_table = None
            dice_by_name: Dict[str, float] = {}
            if movingSegmentation is not None and result.warped_labels is not None:
                warped_segmentation = node_for(
                    outputs.warpedSegmentation, "vtkMRMLSegmentationNode", f"{movingSegmentation.GetName()} warped", "warpedSegmentation"
                )
                if warped_segmentation.GetDisplayNode() is None:
                    warped_segmentation.CreateDefaultDisplayNodes()
                segmentations.update_segmentation_from_labels(
                    warped_segmentation, result.warped_labels, label_names, label_colors, fixedVolume
                )
            dice = _per_label(result.metrics.get("dice"))
            if fixedSegmentation is not None and movingSegmentation is not None and dice:
                dice = {label: value for label, value in dice.items() if label in label_names}
                dice_table = node_for(outputs.diceTable, "vtkMRMLTableNode", f"{base} Dice", "dice")
                segmentations.update_dice_table(dice_table, dice, label_names, _per_label(result.metrics.get("hd95_mm")))
                dice_by_name = {label_names[label]: float(value) for label, value in sorted(dice.items())}
        except Exception:
            for node in created:
                scene.RemoveNode(node)
            raise

        if showResult:
            movingVolume.SetAndObserveTransformNodeID(transform.GetID())
            overlay_node = {"entropy": entropy, "jacobian": jacobian, "warped": warped, "none": None}[overlay]
            views.show_in_slice_views(scene, fixedVolume, overlay_node, overlayOpacity)

        timings = {"slicer_input": input_seconds}
        timings.update({str(k): float(v) for k, v in dict(result.timings).items()})
        timings["slicer_output"] = time.perf_counter() - output_start
        run = RegistrationRun(
            transform=transform,
            warpedVolume=warped,
            entropyVolume=entropy,
            jacobianVolume=jacobian,
            warpedSegmentation=warped_segmentation,
            diceTable=dice_table,
            metrics=dict(result.metrics),
            dice=dice_by_name,
            timings=timings,
            device=str(result.device),
            featureCacheHit=cache_hit,
            totalSeconds=time.perf_counter() - start,
            config=result.config,
            createdNodeIDs=[node.GetID() for node in created],
        )
        self.lastRun = run
        return run

    # ------------------------------------------------------------------ display
    def showOverlay(self, parameterNode) -> int:
        """Show the fixed volume with the chosen overlay output of a parameter node; returns views updated."""
        values = parameters.get_values(parameterNode)
        overlay_node = {
            "entropy": parameterNode.GetNodeReference("outputEntropy"),
            "jacobian": parameterNode.GetNodeReference("outputJacobian"),
            "warped": parameterNode.GetNodeReference("outputVolume"),
            "none": None,
        }[values["overlay"]]
        return views.show_in_slice_views(
            self.scene, parameterNode.GetNodeReference("fixedVolume"), overlay_node, values["overlayOpacity"]
        )


# ---------------------------------------------------------------------- helpers
def _as_config(voxelopt, config):
    if config is None:
        return voxelopt.RegistrationConfig.preset("paper")
    if isinstance(config, voxelopt.RegistrationConfig):
        return config
    if isinstance(config, Mapping):
        return voxelopt.RegistrationConfig.from_dict(dict(config))
    raise TypeError(f"config must be a voxelopt.RegistrationConfig, a dict or None, got {type(config).__name__}")


_OUTPUT_CLASSES = {
    "transform": "vtkMRMLTransformNode",
    "warpedVolume": "vtkMRMLScalarVolumeNode",
    "entropyVolume": "vtkMRMLScalarVolumeNode",
    "jacobianVolume": "vtkMRMLScalarVolumeNode",
    "warpedSegmentation": "vtkMRMLSegmentationNode",
    "diceTable": "vtkMRMLTableNode",
}


def _check_output_classes(outputs: RegistrationOutputs) -> None:
    for field, class_name in _OUTPUT_CLASSES.items():
        node = getattr(outputs, field)
        if node is not None and not node.IsA(class_name):
            raise InputNodeError(f"output {field} '{node.GetName()}' is a {node.GetClassName()}, a {class_name} is needed")
        if node is not None and class_name == "vtkMRMLScalarVolumeNode" and node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputNodeError(f"output {field} '{node.GetName()}' is a label map; choose a scalar volume")


def _write_on_fixed_grid(node, image, fixed_volume) -> None:
    """Store an engine image (on the fixed grid) in ``node`` with exactly the fixed node's geometry."""
    from . import volumes

    volumes.update_volume_node_from_sitk(node, image)
    fixed_dims = tuple(fixed_volume.GetImageData().GetDimensions())
    if tuple(node.GetImageData().GetDimensions()) != fixed_dims:
        raise RuntimeError(
            f"the engine returned an image of size {node.GetImageData().GetDimensions()} for '{node.GetName()}', "
            f"expected the fixed grid {fixed_dims}"
        )
    node.CopyOrientation(fixed_volume)  # bit-identical IJK->RAS (no LPS/RAS round-off)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def _copy_window(source, target) -> None:
    src, dst = source.GetDisplayNode(), target.GetDisplayNode()
    if src is not None and dst is not None:
        dst.SetAutoWindowLevel(False)
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())


def _min_max(image) -> Tuple[float, float]:
    import SimpleITK as sitk

    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    return float(stats.GetMinimum()), float(stats.GetMaximum())


def _per_label(metric) -> Dict[int, float]:
    """A per-label metric as {int label: float}; {} for None or a scalar."""
    if not isinstance(metric, Mapping):
        return {}
    out = {}
    for key, value in metric.items():
        try:
            out[int(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _content_mtime(node) -> int:
    """Modification time of a node's content (image data or segmentation), 0 for None."""
    if node is None:
        return 0
    if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
        return int(node.GetImageData().GetMTime())
    if node.IsA("vtkMRMLSegmentationNode"):
        return int(node.GetSegmentation().GetMTime())
    return int(node.GetMTime())
