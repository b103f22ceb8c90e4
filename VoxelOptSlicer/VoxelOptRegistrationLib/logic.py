"""The module's Logic: volume nodes and parameters in, MRML result nodes out.

This is also the batch-scripting API (Slicer's Python console, ``Slicer --no-main-window
--python-script``) and runs on headless ``slicer-core``. Example::

    from VoxelOptRegistrationLib import RegistrationLogic
    logic = RegistrationLogic()
    run = logic.process(fixedNode, movingNode, voxelopt.RegistrationConfig.preset("fast"))
    print(run.summary())

What a run produces (all on the fixed volume's voxel grid unless stated):

* ``transform``: a ``vtkMRMLGridTransformNode`` holding the displacement field (on its own grid,
  the feature grid, float32) in the **resampling
  (FromParent)** direction, i.e. it maps fixed-space points to moving-space points (see
  :mod:`.transforms`), with the moving and fixed volumes as its moving/fixed node references.
  With ``showResult`` the moving volume is put under it, so the viewers warp it live.
* ``warpedVolume``: the moving volume resampled onto the fixed grid, in its pixel type (not made
  with ``warpedVolume=False``: the transform alone, through which the views warp the moving volume).
* ``entropyVolume``: entropy of the displacement distribution (nats) on the solver's working grid
  (4 mm with the default parameters), inferno colour table.
* ``jacobianVolume``: determinant of the Jacobian of x -> x + u(x) on the field's grid (the
  feature grid, 2 mm by default), diverging table centred at 1, folding (det J <= 0) in green.
* with segmentations: ``warpedSegmentation`` (the moving segments on the fixed grid) and a
  ``diceTable`` comparing it with the fixed segmentation (segments matched by name).

A run is three steps, so that the GUI can keep the engine off its thread:

1. :meth:`RegistrationLogic.prepare` (main thread): validate and convert the input nodes into
   :class:`EngineInputs` (SimpleITK images and the config: no MRML object);
2. :meth:`RegistrationLogic.compute` (any thread): the engine only, no MRML access;
3. :meth:`RegistrationLogic.apply` (main thread): write the output nodes.

All-or-nothing: inputs are validated before anything is created; a cancelled or failed run leaves
the scene as it was (nodes created by the run are removed, overwritten ones restored: see
:mod:`.transaction`).
"""

import dataclasses
import numbers
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import slicer
import vtk

from . import colors, dependencies, parameters, views
from .errors import InputNodeError, VoxelOptSlicerError
from .presets import PresetStore

if TYPE_CHECKING:
    from .transaction import SceneTransaction

# The modules that use SimpleITK (volumes, segmentations, transforms, transaction, warping,
# quality) are imported where a registration or a result needs them, so that opening the module
# (parameter node, presets, device label) loads neither SimpleITK nor torch.

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


#: RegistrationOutputs field -> parameter-node reference name.
_OUTPUT_PARAMETERS = {
    "transform": "outputTransform",
    "warpedVolume": "outputVolume",
    "entropyVolume": "outputEntropy",
    "jacobianVolume": "outputJacobian",
    "warpedSegmentation": "outputSegmentation",
    "diceTable": "outputDiceTable",
}

#: The node classes :meth:`RegistrationLogic.prepare` takes for each input (by its role in messages);
#: a transform node holding a linear transform will do as the initial transform.
_INPUT_CLASSES = {
    "fixed volume": ("vtkMRMLScalarVolumeNode",),
    "moving volume": ("vtkMRMLScalarVolumeNode",),
    "fixed segmentation": ("vtkMRMLSegmentationNode",),
    "moving segmentation": ("vtkMRMLSegmentationNode",),
    "fixed mask": parameters.MASK_CLASSES,
    "moving mask": parameters.MASK_CLASSES,
    "initial transform": ("vtkMRMLTransformNode",),
}

#: RegistrationOutputs field -> the ``VoxelOpt.Role`` attribute of the node a run makes for it.
_OUTPUT_ROLES = {
    "transform": "transform",
    "warpedVolume": "warped",
    "entropyVolume": "entropy",
    "jacobianVolume": "jacobian",
    "warpedSegmentation": "warpedSegmentation",
    "diceTable": "dice",
}


@dataclasses.dataclass
class EngineInputs:
    """What the engine needs, read from the scene: SimpleITK images (LPS) and the config, no MRML node.

    ``fixed_labels``/``moving_labels``: label maps of the matched segments (None without them);
    ``fixed_mask``/``moving_mask``: uint8 masks (1 = use the voxel in the cost) or None;
    ``initial_transform``: a ``sitk.AffineTransform`` (LPS mm, fixed -> moving points) or None;
    ``weight_downloads``: network weights (``WeightsInfo``) to download into ``config.weights`` first;
    ``warp_moving``: whether the moving volume is resampled onto the fixed grid (the warped volume).
    The images are the module's own copies (:meth:`RegistrationLogic.prepare`), which nothing
    writes to: :meth:`RegistrationLogic.compute` tells the feature cache so (``mark_constant``).
    """

    fixed_image: Any
    moving_image: Any
    config: Any
    fixed_labels: Any = None
    moving_labels: Any = None
    fixed_mask: Any = None
    moving_mask: Any = None
    initial_transform: Any = None
    weight_downloads: Tuple[Any, ...] = ()
    warp_moving: bool = True


@dataclasses.dataclass
class RegistrationRequest:
    """A prepared run: the nodes (main thread only) and the engine inputs (any thread).

    ``labelNames``/``labelColors``: segment name and colour per label of the label maps;
    ``inputSeconds``: time spent reading the scene; ``inputWarnings``: what about the input nodes
    may spoil the result (e.g. overlapping segments), reported with the run's warnings;
    ``unmatchedSegments``: (names of the fixed segments, names of the moving segments) that have
    no segment of the same name in the other segmentation (see
    :func:`.segmentations.unmatched_segments`): they are not scored.
    """

    fixedVolume: Any
    movingVolume: Any
    fixedSegmentation: Any
    movingSegmentation: Any
    outputs: RegistrationOutputs
    engineInputs: EngineInputs
    labelNames: Dict[int, str]
    labelColors: Dict[int, Tuple[float, float, float]]
    inputSeconds: float
    inputWarnings: List[str] = dataclasses.field(default_factory=list)
    unmatchedSegments: Tuple[Tuple[str, ...], Tuple[str, ...]] = ((), ())


@dataclasses.dataclass
class EngineOutput:
    """The engine's ``voxelopt.RegistrationResult``, whether both images' features came from the
    cache, and the engine's wall time (seconds). ``applied``: written into the scene already (the
    first :meth:`RegistrationLogic.apply` hands the warped image's voxels to its node; a later one
    copies them, so that two nodes never share one buffer)."""

    result: Any
    cacheHit: bool
    seconds: float
    applied: bool = False


@dataclasses.dataclass
class RegistrationRun:
    """What one registration produced: the output nodes and the numbers to report.

    Attributes:
        transform, warpedVolume, entropyVolume, jacobianVolume: output nodes (see the module doc;
            ``warpedVolume`` None when it was not asked for).
        warpedSegmentation, diceTable: output nodes when segmentations were given, else None.
        metrics: the engine's metrics ("sdlogj", "folding_percent", "dice", "dice_mean", ...).
        dice: Dice (0-1) per segment name (empty without both segmentations).
        timings: seconds per stage: the engine's stages plus "slicer_input" and "slicer_output".
        device: the torch device used, e.g. "cpu".
        featureCacheHit: True when the features of both images came from the cache.
        totalSeconds: wall time of the run: reading the scene, the engine and writing the scene
            (time the GUI spent between the steps is not counted).
        config: the engine configuration used (``voxelopt.RegistrationConfig``).
        createdNodeIDs: IDs of the nodes this run added to the scene (data nodes; remove them with
            their display nodes by :meth:`RegistrationLogic.removeRunNodes`).
        warnings: notes for the user, shown first by :meth:`summary`: what about the inputs may
            have spoiled the result (segments that overlap, see
            :func:`.segmentations.overlap_warnings`), a fixed volume taken out of a VoxelOpt
            transform, ``voxelopt.InputWarning`` messages (e.g. intensities that do not look like
            CT in HU), the segments the Dice table leaves out or the warp lost (see
            :func:`.segmentations.unscored_warnings`) and outputs deleted during the run.
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
    warnings: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """A plain-text report for the GUI's results box or a log: warnings, timings, SDlogJ, folding, Dice."""
        lines = [f"Warning: {text}" for text in self.warnings]
        lines += [f"Device: {self.device}    total: {self.totalSeconds:.2f} s" + ("    (features from cache)" if self.featureCacheHit else "")]
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
        #: Reuse the segmentations' label-map exports while they are unchanged (see
        #: :class:`.segmentations.ExportCache`); False exports every time.
        self.cacheSegmentationExports = True
        self._exportCache = None
        #: Reuse the input volumes' SimpleITK copies while their voxels are unchanged (see
        #: :class:`.volumes.VolumeCopies`); False copies every time (and keeps no copy between runs).
        self.cacheVolumeCopies = True
        self._volumeCopies = None
        self._lastRun: Optional[RegistrationRun] = None
        #: Where user presets are saved (see :mod:`.presets`); replace it to use another folder.
        self.presetStore = PresetStore()
        #: Folder of network weights (see :mod:`.network_weights`); None: ``<Slicer cache>/VoxelOpt``.
        self.weightsDirectory: Optional[str] = None

    @property
    def lastRun(self) -> Optional[RegistrationRun]:
        """The last successful run; None before any, or once its transform left the scene (scene closed)."""
        run = self._lastRun
        if run is not None and run.transform.GetScene() is not self.scene:
            self._lastRun = None
        return self._lastRun

    # ------------------------------------------------------------------ scene and parameter node
    @property
    def scene(self):
        """The MRML scene the logic works in."""
        if self._scene is not None:
            return self._scene
        scene = getattr(slicer, "mrmlScene", None)  # set by the Slicer application, not by slicer-core alone
        if scene is None:
            raise VoxelOptSlicerError(
                "no MRML scene: outside the Slicer application (the slicer-core package) give the logic one, "
                "RegistrationLogic(scene) with scene = slicer.vtkMRMLScene(), or set slicer.mrmlScene")
        return scene

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

    def saveUserPreset(self, parameterNode, name: str) -> str:
        """Save the parameter node's registration parameters as user preset ``name``; returns the JSON file."""
        return self.presetStore.save(name, parameters.get_values(parameterNode))

    def loadUserPreset(self, parameterNode, name: str) -> None:
        """Write user preset ``name`` into the parameter node (one Modified event); raises PresetError."""
        parameters.set_values(parameterNode, self.presetStore.load(name))

    def configFromParameterNode(self, parameterNode):
        """The ``voxelopt.RegistrationConfig`` the parameter node describes (raises ConfigError, and
        InputNodeError for a value whose stored text is unreadable)."""
        import voxelopt

        values = parameters.get_values(parameterNode)
        try:
            kwargs = parameters.config_values(values)
        except ValueError as error:
            raise voxelopt.ConfigError(str(error)) from None
        return voxelopt.RegistrationConfig.from_dict({**voxelopt.RegistrationConfig().to_dict(), **kwargs})

    def registrationInputsKey(self, parameterNode) -> Tuple[Any, ...]:
        """A value that changes whenever a parameter or input that affects the registration changes.

        The GUI's "update automatically" re-runs when it differs from the last run's key (see
        :meth:`autoUpdateDue`); display parameters (overlay, opacity) are not part of it. Values are
        compared as stored (text), so that an unreadable one changes the key too (the run then
        reports it) instead of failing here. Input nodes count by their content and geometry (see
        :func:`_content_key`: modification times and matrices, nothing is read voxel by voxel).
        """
        key = [(p.name, parameterNode.GetParameter(p.name)) for p in parameters.VALUE_PARAMETERS
               if p.name not in parameters.DISPLAY_ONLY]
        for p in parameters.NODE_PARAMETERS:
            if not p.output:
                referenced = parameterNode.GetNodeReference(p.name)
                key.append((p.name, referenced.GetID() if referenced else None, _content_key(referenced)))
        return tuple(key)

    def autoUpdateDue(self, parameterNode, lastRunKey) -> bool:
        """Whether "Update automatically" should re-run now: it is ticked, a run succeeded before
        (``lastRunKey``: its :meth:`registrationInputsKey`, None before any) and a parameter or
        input changed since. The GUI asks on every parameter change and again after each run, so
        that a change made while the engine ran (when the GUI does not start another run) is
        registered once the run is written."""
        values = parameters.readable_values(parameterNode)
        return (bool(values.get("autoUpdate")) and lastRunKey is not None
                and self.registrationInputsKey(parameterNode) != lastRunKey)

    # ------------------------------------------------------------------ running
    def getFeatureCache(self):
        """The logic's ``voxelopt.FeatureCache`` (created on first use)."""
        if self.featureCache is None:
            import voxelopt

            self.featureCache = voxelopt.FeatureCache()
        return self.featureCache

    def clearCaches(self) -> None:
        """Forget what the logic keeps between runs: the features, alignments and scores of the
        feature cache (in memory), the segmentation exports and the volume copies (called when the
        scene closes: they hold up to a few GB for native-size CT)."""
        if self.featureCache is not None:
            self.featureCache.clear()
        self._exportCache = None
        self._volumeCopies = None

    def prepareParameterNode(self, parameterNode, allowWeightsDownload: bool = False) -> "RegistrationRequest":
        """Step 1 (main thread) for a parameter node: its inputs, outputs and parameters read and checked
        (``allowWeightsDownload``: see :meth:`prepare`). The display values (overlay, opacity) are
        checked here too, so that a bad one is refused before the registration runs."""
        values = parameters.get_values(parameterNode)
        _check_display(values["overlay"], values["overlayOpacity"], parameterNode)
        get = lambda name: parameters.get_node(parameterNode, name)  # noqa: E731
        outputs = RegistrationOutputs(**{field: get(name) for field, name in _OUTPUT_PARAMETERS.items()})
        outputs = self._withParkedOutputs(parameterNode, outputs, values["warpedVolume"])
        return self.prepare(
            get("fixedVolume"),
            get("movingVolume"),
            self.configFromParameterNode(parameterNode),
            fixedSegmentation=get("fixedSegmentation"),
            movingSegmentation=get("movingSegmentation"),
            outputs=outputs,
            fixedMask=get("fixedMask"),
            movingMask=get("movingMask"),
            initialTransform=get("initialTransform"),
            allowWeightsDownload=allowWeightsDownload,
            warpedVolume=values["warpedVolume"],
        )

    def applyParameterNode(self, parameterNode, request: "RegistrationRequest", computed: "EngineOutput",
                           showResult: bool = True) -> RegistrationRun:
        """Step 3 (main thread) for a parameter node: write the outputs and reference them in the node."""
        values = parameters.get_values(parameterNode)
        run = self.apply(request, computed, showResult, values["overlay"], values["overlayOpacity"])
        was_modifying = parameterNode.StartModify()
        for field, name in _OUTPUT_PARAMETERS.items():
            made, given = getattr(run, field), getattr(request.outputs, field)
            # None where the run made no such output (e.g. no warped volume asked for, no segmentations):
            # an earlier run's node is no output of this one; it is parked, for a run that makes it again
            parameters.set_node(parameterNode, name, made)
            if made is not None:
                parameters.park_output(parameterNode, name, None)
            elif given is not None and given.GetScene() is self.scene:
                parameters.park_output(parameterNode, name, given)
        parameterNode.EndModify(was_modifying)
        return run

    def _withParkedOutputs(self, parameterNode, outputs: RegistrationOutputs, warpVolume: bool) -> RegistrationOutputs:
        """``outputs`` with the parked node (see :func:`.parameters.park_output`) for each output that
        has no node and that this run makes (the warped volume when asked for, the warped
        segmentation with a moving segmentation, the Dice table with both): turning an output off
        and on again, or taking the segmentations out and back, writes into the node it had. A
        parked node the user has renamed (it is theirs now), removed, or chosen as an input is left."""
        from .transaction import AUTO_NAME_ATTRIBUTE
        from .volumes import ROLE_ATTRIBUTE

        get = lambda name: parameters.get_node(parameterNode, name)  # noqa: E731
        made = {"warpedVolume": warpVolume,
                "warpedSegmentation": get("movingSegmentation") is not None,
                "diceTable": get("movingSegmentation") is not None and get("fixedSegmentation") is not None}
        inputs = {get(p.name) for p in parameters.NODE_PARAMETERS if p.name not in _OUTPUT_PARAMETERS.values()}
        parked = {}
        for field, name in _OUTPUT_PARAMETERS.items():
            node = parameters.parked_output(parameterNode, name)
            if (getattr(outputs, field) is None and made.get(field, True) and node is not None
                    and node.GetScene() is self.scene and node not in inputs
                    and node.GetAttribute(ROLE_ATTRIBUTE) == _OUTPUT_ROLES[field]
                    and node.GetName() == node.GetAttribute(AUTO_NAME_ATTRIBUTE)):
                parked[field] = node
        return dataclasses.replace(outputs, **parked)

    def processParameterNode(
        self,
        parameterNode,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
        showResult: bool = True,
    ) -> RegistrationRun:
        """Run with the inputs, outputs and parameters of a parameter node; store the output nodes in it."""
        request = self.prepareParameterNode(parameterNode)
        computed = self.compute(request.engineInputs, progress, cancel)
        return self.applyParameterNode(parameterNode, request, computed, showResult)

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
        fixedMask=None,
        movingMask=None,
        initialTransform=None,
        allowWeightsDownload: bool = False,
        warpedVolume: bool = True,
    ) -> RegistrationRun:
        """Register ``movingVolume`` onto ``fixedVolume`` and write the result nodes.

        The three steps :meth:`prepare` (read the scene), :meth:`compute` (the engine, no MRML
        access: may run on a worker thread) and :meth:`apply` (write the scene) in a row.

        Args:
            fixedVolume, movingVolume: scalar volume nodes (HU for CT). Their own voxel geometry
                is used; a parent transform is refused, except a VoxelOpt registration transform
                that is not itself under a transform (a previous run's live warp): it is ignored,
                and a fixed volume is taken out of it (see :meth:`apply`). The segmentations,
                masks and initial transform must not be under any transform.
            config: a ``voxelopt.RegistrationConfig``, a dict of its fields, or None (the default preset, "abdomen").
            fixedSegmentation, movingSegmentation: optional segmentation nodes; segments are matched
                by name. The moving one gives ``warpedSegmentation``; both give the Dice table. Where
                matched segments overlap, the one later in the moving segmentation's order keeps the
                shared voxels; ``run.warnings`` names each segment cut or hidden that way, and the
                segments the Dice table leaves out (see :func:`.segmentations.unscored_warnings`).
            outputs: existing nodes of the logic's scene to overwrite (None fields: new nodes are created).
            progress: ``progress(fraction 0-1, message)``, called by the engine between steps.
            cancel: ``cancel() -> bool``; when it returns True the engine stops at the next step and
                ``voxelopt.RegistrationCancelled`` is raised, the scene left as it was.
            showResult: put the moving volume under the transform (live warp) and show the fixed
                volume with the ``overlay`` ("entropy", "jacobian", "warped" or "none") in the
                slice views at ``overlayOpacity``; harmless without views.
            fixedMask, movingMask: optional masks of the volumes' voxels used in the cost (e.g. to
                leave out a tumour, metal or the table): a segmentation node (all its segments) or a
                label map volume node (its nonzero voxels).
            initialTransform: optional linear transform node whose FromParent side (fixed -> moving
                points) is the initial alignment with ``init="none"``, the start of ``init="affine"``.
            allowWeightsDownload: network features (obelisk, pdd) whose weights are not in
                :attr:`weightsDirectory` are downloaded there (by :meth:`compute`); when False they
                raise :class:`WeightsDownloadRequired` instead, before anything is done.
            warpedVolume: resample the moving volume onto the fixed grid (``warpedVolume`` output);
                False makes the transform alone (the moving volume is shown through it, warped live):
                a re-run is faster by the full-size resampling (1.5 s for a 512x512x600 CT on 2
                cores); ``run.warpedVolume`` is then None and the "warped" overlay shows the moving
                volume through the transform.

        Raises:
            InputNodeError: missing/invalid input nodes (NaN, not 3-D, bad geometry, transform, a
                label map as fixed or moving volume, one volume as both), input or output nodes not
                in the logic's scene (deleted, or of another scene), output nodes that are input
                nodes or another output too, an output transform that is not a grid transform or
                is under a transform; a bad ``overlay`` or ``overlayOpacity``.
            MissingDependencyError: torch is not installed.
            voxelopt.InputError, voxelopt.ConfigError: raised by the engine.
            voxelopt.RegistrationCancelled: ``cancel()`` returned True.
        """
        _check_display(overlay, overlayOpacity)
        request = self.prepare(fixedVolume, movingVolume, config, fixedSegmentation, movingSegmentation, outputs,
                               fixedMask, movingMask, initialTransform, allowWeightsDownload, warpedVolume)
        computed = self.compute(request.engineInputs, progress, cancel)
        return self.apply(request, computed, showResult, overlay, overlayOpacity)

    def prepare(
        self,
        fixedVolume,
        movingVolume,
        config: Union[None, Mapping[str, Any], Any] = None,
        fixedSegmentation=None,
        movingSegmentation=None,
        outputs: Optional[RegistrationOutputs] = None,
        fixedMask=None,
        movingMask=None,
        initialTransform=None,
        allowWeightsDownload: bool = False,
        warpedVolume: bool = True,
    ) -> "RegistrationRequest":
        """Step 1 (main thread): validate every input node and convert it for the engine; the scene is not changed.

        Arguments as in :meth:`process`. Raises InputNodeError, MissingDependencyError, ConfigError,
        WeightsDownloadRequired.
        """
        start = time.perf_counter()
        dependencies.require_torch()
        import voxelopt

        from . import network_weights, segmentations, transforms, volumes

        if outputs is not None and not isinstance(outputs, RegistrationOutputs):
            raise InputNodeError(f"outputs must be a RegistrationOutputs (e.g. RegistrationOutputs(transform=node)), "
                                 f"got {type(outputs).__name__}")
        outputs = outputs or RegistrationOutputs()
        inputs = {
            "fixed volume": fixedVolume, "moving volume": movingVolume, "fixed segmentation": fixedSegmentation,
            "moving segmentation": movingSegmentation, "fixed mask": fixedMask, "moving mask": movingMask,
            "initial transform": initialTransform,
        }
        _check_node_kinds({role: (node, _INPUT_CLASSES[role]) for role, node in inputs.items()})
        _check_node_kinds({f"output {field}": (getattr(outputs, field), ("vtkMRMLNode",)) for field in _OUTPUT_PARAMETERS})
        _check_output_classes(outputs)
        _check_nodes_in_scene(self.scene, inputs, outputs)
        _check_input_volumes(fixedVolume, movingVolume)
        _check_outputs_are_not_inputs(outputs, inputs)
        _check_output_parents(outputs)
        config = _as_config(voxelopt, config)
        fixed_image = self._volumeImage(fixedVolume, "fixed")
        moving_image = self._volumeImage(movingVolume, "moving")
        volumes.parent_transform_check(fixedVolume, role="fixed volume")  # apply takes it out of a VoxelOpt transform
        volumes.parent_transform_check(movingVolume, role="moving volume")
        for role, node in (("fixed", fixedSegmentation), ("moving", movingSegmentation)):
            if node is not None:
                if not node.IsA("vtkMRMLSegmentationNode"):
                    raise InputNodeError(f"{role} segmentation '{node.GetName()}' is a {node.GetClassName()}, not a segmentation")
                volumes.parent_transform_check(node, ignore_roles=(), role=f"{role} segmentation")
        if self.cacheSegmentationExports and self._exportCache is None:
            self._exportCache = segmentations.ExportCache()
        export_cache = self._exportCache if self.cacheSegmentationExports else None
        input_warnings: List[str] = []
        fixed_labels, moving_labels, label_names, label_colors = segmentations.labelmaps_for_registration(
            fixedSegmentation, movingSegmentation, fixedVolume, movingVolume, export_cache, input_warnings
        )
        unmatched = segmentations.unmatched_segments(fixedSegmentation, movingSegmentation)
        masks = {}
        for role, node, volume in (("fixed", fixedMask, fixedVolume), ("moving", movingMask, movingVolume)):
            if node is not None:
                volumes.parent_transform_check(node, ignore_roles=(), role=f"{role} mask")
                masks[role] = segmentations.mask_for_registration(node, volume, role, export_cache)
        initial = None
        if initialTransform is not None:
            volumes.parent_transform_check(initialTransform, ignore_roles=(), role="initial transform")
            initial = transforms.sitk_transform_from_linear_node(initialTransform)
        config = network_weights.with_weights_directory(config, self.weightsDirectory or network_weights.default_directory())
        downloads = network_weights.check_downloads(config, allowWeightsDownload)
        engine_inputs = EngineInputs(fixed_image, moving_image, config, fixed_labels, moving_labels,
                                     masks.get("fixed"), masks.get("moving"), initial, tuple(downloads), bool(warpedVolume))
        return RegistrationRequest(
            fixedVolume, movingVolume, fixedSegmentation, movingSegmentation, outputs, engine_inputs,
            label_names, label_colors, time.perf_counter() - start, input_warnings, unmatched,
        )

    def _volumeImage(self, node, role: str):
        """The SimpleITK copy of an input volume node, kept between runs unless ``cacheVolumeCopies`` is False."""
        from . import volumes

        if not self.cacheVolumeCopies:
            self._volumeCopies = None
            return volumes.sitk_from_volume_node(node, role)
        if self._volumeCopies is None:
            self._volumeCopies = volumes.VolumeCopies()
        return self._volumeCopies.image(node, role)

    def compute(
        self,
        inputs: "EngineInputs",
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> "EngineOutput":
        """Step 2: the engine alone. Touches no MRML node, so it may run on a worker thread.

        Raises voxelopt.InputError / ConfigError / RegistrationCancelled (see :meth:`process`).
        """
        import voxelopt

        start = time.perf_counter()
        if inputs.weight_downloads:
            from . import network_weights

            network_weights.download(inputs.weight_downloads, inputs.config.weights, progress)
        cache = self.getFeatureCache()
        for image in (inputs.fixed_image, inputs.moving_image, inputs.fixed_labels, inputs.moving_labels,
                      inputs.fixed_mask, inputs.moving_mask):
            if image is not None:  # the module's own copies: nothing writes to them
                cache.mark_constant(image)
        hits, misses = cache.hits, cache.misses
        # the warped volume too, here and not in apply (apply runs on the GUI thread), and made by
        # the engine beside the label scores
        result = voxelopt.register(
            inputs.fixed_image,
            inputs.moving_image,
            inputs.config,
            fixed_labels=inputs.fixed_labels,
            moving_labels=inputs.moving_labels,
            progress=progress,
            cancel=cancel,
            cache=cache,
            initial_transform=inputs.initial_transform,
            fixed_mask=inputs.fixed_mask,
            moving_mask=inputs.moving_mask,
            warp_moving=inputs.warp_moving,
        )
        return EngineOutput(result, cache.hits > hits and cache.misses == misses, time.perf_counter() - start)

    def apply(
        self,
        request: "RegistrationRequest",
        computed: "EngineOutput",
        showResult: bool = True,
        overlay: str = "entropy",
        overlayOpacity: float = 0.5,
    ) -> RegistrationRun:
        """Step 3 (main thread): write the result nodes, all or nothing (see :mod:`.transaction`).

        On any failure, nodes created by the run are removed and overwritten ones restored. An
        output node deleted from the scene while the engine ran is not written (nor would it be
        seen): a new node is created for that output, as when none is given, and
        ``run.warnings`` says so. A fixed volume under a VoxelOpt transform (a previous result,
        e.g. after swapping fixed and moving) is taken out of it: the registration used its voxels
        as stored, and the views then show it so (also said in ``run.warnings``).

        Raises:
            InputNodeError: the fixed or moving volume was deleted from the scene, or its voxel
                grid changed, during the run.
        """
        from .transaction import SceneTransaction
        from .volumes import node_on_image_grid

        _check_display(overlay, overlayOpacity)
        start = time.perf_counter()
        inputs = request.engineInputs
        for role, node, image in (("fixed volume", request.fixedVolume, inputs.fixed_image),
                                  ("moving volume", request.movingVolume, inputs.moving_image)):
            if node.GetScene() is not self.scene:
                raise InputNodeError(f"the {role} '{node.GetName()}' was removed from the scene during the registration")
            if not node_on_image_grid(node, image):  # the result is on the grids it had: it would be misplaced
                raise InputNodeError(f"the {role} '{node.GetName()}' changed its size, spacing, origin or orientation "
                                     "during the registration; nothing was written: run the registration again")
        chosen = {field: getattr(request.outputs, field) for field in _OUTPUT_PARAMETERS}
        deleted = {field: node for field, node in chosen.items() if node is not None and node.GetScene() is not self.scene}
        if deleted:  # new nodes for them
            request = dataclasses.replace(request, outputs=dataclasses.replace(request.outputs, **dict.fromkeys(deleted)))
        result = computed.result
        warnings = list(request.inputWarnings)
        with SceneTransaction(self.scene) as writes:
            warnings += self._takeFixedOutOfVoxelOptTransform(writes, request.fixedVolume)
            transform = self._writeTransform(writes, request, result.field)
            warped, entropy, jacobian = self._writeMaps(writes, request, result, share=not computed.applied)
            computed.applied = True
            warped_segmentation = self._writeWarpedSegmentation(writes, request, result)
            dice_table, dice_by_name = self._writeDiceTable(writes, request, result)
            if showResult:
                writes.set_parent_transform(request.movingVolume, transform)
        if showResult:
            # without a warped volume, the moving volume shows warped through the transform it is now under
            overlay_node = {"entropy": entropy, "jacobian": jacobian, "warped": warped or request.movingVolume,
                            "none": None}[overlay]
            views.show_result(self.scene, request.fixedVolume, overlay_node, overlayOpacity, overlay in colors.ADDITIVE_OVERLAYS)

        timings = {"slicer_input": request.inputSeconds}
        timings.update({str(k): float(v) for k, v in dict(result.timings).items()})
        timings["slicer_output"] = time.perf_counter() - start
        written = {"transform": transform, "warpedVolume": warped, "entropyVolume": entropy, "jacobianVolume": jacobian,
                   "warpedSegmentation": warped_segmentation, "diceTable": dice_table}
        warnings += list(result.warnings) + _result_warnings(request, result.metrics, chosen, deleted, written)
        run = RegistrationRun(
            **written,
            metrics=dict(result.metrics),
            dice=dice_by_name,
            timings=timings,
            device=str(result.device),
            featureCacheHit=computed.cacheHit,
            totalSeconds=request.inputSeconds + computed.seconds + timings["slicer_output"],
            config=result.config,
            createdNodeIDs=[node.GetID() for node in writes.created],
            warnings=warnings,
        )
        self._lastRun = run
        return run

    # ------------------------------------------------------------------ the writes of apply
    @staticmethod
    def _takeFixedOutOfVoxelOptTransform(writes: "SceneTransaction", fixed) -> List[str]:
        """Take the fixed volume out of a VoxelOpt registration transform it sits under (see
        :meth:`apply`); returns the warning saying so (none when it is not under one)."""
        from .volumes import ROLE_ATTRIBUTE

        parent = fixed.GetParentTransformNode()
        if parent is None or parent.GetAttribute(ROLE_ATTRIBUTE) != "transform":
            return []
        writes.set_parent_transform(fixed, None)
        return [f"fixed volume '{fixed.GetName()}' was under '{parent.GetName()}', the transform of an earlier "
                "VoxelOpt registration; it was taken out of it, as the registration uses the fixed volume as stored"]

    def _writeTransform(self, writes: "SceneTransaction", request: "RegistrationRequest", field):
        """The grid transform node (FromParent); a previous moving volume left under it is taken out."""
        moving = request.movingVolume
        transform = writes.node_for(request.outputs.transform, "vtkMRMLGridTransformNode",
                                    f"{moving.GetName()} VoxelOpt transform", "transform")
        previous = transform.GetNodeReference(transform.GetMovingNodeReferenceRole())
        if previous is not None and previous is not moving and previous.GetParentTransformNode() is transform:
            writes.set_parent_transform(previous, None)  # it would show the new field otherwise
        from . import transforms

        transforms.set_field_on_transform_node(transform, field, moving, request.fixedVolume)
        return transform

    def _writeMaps(self, writes: "SceneTransaction", request: "RegistrationRequest", result,
                   share: bool) -> Tuple[Any, Any, Any]:
        """The warped volume (on the fixed grid; None when it was not asked for; ``share``: it holds
        the result's own voxels), the entropy map (on the solver's working grid) and the Jacobian map
        (on the field's grid), with their colour tables."""
        from . import volumes

        base, outputs, fixed = request.movingVolume.GetName(), request.outputs, request.fixedVolume
        warped = None
        if request.engineInputs.warp_moving:
            warped = writes.node_for(outputs.warpedVolume, "vtkMRMLScalarVolumeNode", f"{base} warped", "warped")
            _copy_window(request.movingVolume, warped)  # first: an automatic window would read every voxel (0.9 s at 512x512x600)
            _write_on_fixed_grid(warped, result.warped, fixed, share)
        entropy = writes.node_for(outputs.entropyVolume, "vtkMRMLScalarVolumeNode", f"{base} entropy", "entropy")
        volumes.update_volume_node_from_sitk(entropy, result.entropy)
        volumes.set_voxel_value_meaning(entropy, "displacement entropy", "{nat}", "nats")
        colors.show_entropy(entropy, volumes.array_from_volume_node(entropy))
        jacobian = writes.node_for(outputs.jacobianVolume, "vtkMRMLScalarVolumeNode", f"{base} Jacobian", "jacobian")
        volumes.update_volume_node_from_sitk(jacobian, result.jacobian)
        volumes.set_voxel_value_meaning(jacobian, "Jacobian determinant", "1", "ratio")
        colors.show_jacobian(jacobian)
        for node, role in ((entropy, "entropy"), (jacobian, "jacobian")):
            legend, created = colors.color_legend(node, role)
            if created:
                writes.added(legend)
        return warped, entropy, jacobian

    def _writeWarpedSegmentation(self, writes: "SceneTransaction", request: "RegistrationRequest", result):
        """The moving segments on the fixed grid (None without a moving segmentation)."""
        moving_segmentation = request.movingSegmentation
        if moving_segmentation is None or result.warped_labels is None:
            return None
        from . import segmentations

        node = writes.node_for(request.outputs.warpedSegmentation, "vtkMRMLSegmentationNode",
                               f"{moving_segmentation.GetName()} warped", "warpedSegmentation")
        segmentations.update_segmentation_from_labels(
            node, result.warped_labels, request.labelNames, request.labelColors, request.fixedVolume
        )
        segmentations.show_outlines(node)  # QA: the warped organs' outlines over the fixed CT
        return node

    def _writeDiceTable(self, writes: "SceneTransaction", request: "RegistrationRequest", result) -> Tuple[Any, Dict[str, float]]:
        """The Dice table (None, {} unless both segmentations were given) and {segment name: Dice}."""
        if request.fixedSegmentation is None or request.movingSegmentation is None:
            return None, {}
        dice, hd95 = _label_scores(result.metrics)
        dice = {label: value for label, value in dice.items() if label in request.labelNames}
        if not dice:
            return None, {}
        from . import segmentations

        table = writes.node_for(request.outputs.diceTable, "vtkMRMLTableNode", f"{request.movingVolume.GetName()} Dice", "dice")
        segmentations.update_dice_table(table, dice, request.labelNames, hd95)
        return table, {request.labelNames[label]: float(value) for label, value in sorted(dice.items())}

    # ------------------------------------------------------------------ using the result
    def removeRunNodes(self, run: RegistrationRun) -> None:
        """Remove the nodes ``run`` created (``run.createdNodeIDs``) with their display and storage
        nodes, e.g. in a batch script once it has saved what it keeps: ``scene.RemoveNode`` alone
        leaves the display nodes behind. Nodes already removed are skipped; overwritten output
        nodes (not created by the run) are left."""
        self.removeNodes([self.scene.GetNodeByID(node_id) for node_id in run.createdNodeIDs])

    def removeNodes(self, nodes) -> None:
        """Remove ``nodes`` from the scene with their display and storage nodes (e.g. a batch
        script's input volumes once a case is done: ``scene.RemoveNode`` alone leaves their
        display nodes behind). None, and nodes not in the scene, are skipped."""
        from .transaction import remove_node

        for node in nodes:
            if node is not None and node.GetScene() is self.scene:
                remove_node(self.scene, node)

    def createInverseTransform(self, transformNode):
        """A new transform node mapping the moving space to the fixed one's opposite (see :mod:`.warping`)."""
        from . import warping

        _check_node_kinds({"registration transform": (transformNode, ("vtkMRMLTransformNode",))}, required=True)
        return warping.create_inverse_transform(transformNode)

    def warpNodes(self, transformNode, nodes, fixedVolume) -> List[Any]:
        """Copies of moving-space volumes, segmentations, markups or models warped into the fixed space."""
        from . import warping

        _check_node_kinds({"registration transform": (transformNode, ("vtkMRMLTransformNode",)),
                           "fixed volume": (fixedVolume, ("vtkMRMLScalarVolumeNode",))}, required=True)
        if not isinstance(nodes, (list, tuple)):
            raise InputNodeError(f"nodes must be a list of the nodes to warp (e.g. [volumeNode]), got "
                                 f"{type(nodes).__name__}")
        for node in nodes:  # each one: warping.warp_nodes then names the classes it warps
            _check_node_kinds({"node to warp": (node, ("vtkMRMLNode",))}, required=True)
        return warping.warp_nodes(transformNode, nodes, fixedVolume)

    def createCheckerboard(self, fixedVolume, warpedVolume, squareMm: float = 20.0):
        """A checkerboard volume of fixed and warped (squares of ``squareMm`` mm) for visual QA."""
        from . import quality

        _check_qa_volumes(fixedVolume, warpedVolume)
        return quality.checkerboard_volume(fixedVolume, warpedVolume, squareMm)

    def createDifference(self, fixedVolume, warpedVolume):
        """A ``warped - fixed`` volume for visual QA."""
        from . import quality

        _check_qa_volumes(fixedVolume, warpedVolume)
        return quality.difference_volume(fixedVolume, warpedVolume)

    # ------------------------------------------------------------------ display
    def showOverlay(self, parameterNode) -> int:
        """Show the parameter node's chosen overlay output at its opacity; returns the views updated.

        Only the slice views' foreground layer changes (a display parameter changed): background,
        zoom and slice offsets stay as the user left them.
        """
        values = parameters.get_values(parameterNode)
        _check_display(values["overlay"], values["overlayOpacity"], parameterNode)
        overlay_node = {
            "entropy": parameterNode.GetNodeReference("outputEntropy"),
            "jacobian": parameterNode.GetNodeReference("outputJacobian"),
            "warped": parameterNode.GetNodeReference("outputVolume") or parameterNode.GetNodeReference("movingVolume"),
            "none": None,
        }[values["overlay"]]
        return views.show_overlay(self.scene, overlay_node, values["overlayOpacity"], values["overlay"] in colors.ADDITIVE_OVERLAYS)


# ---------------------------------------------------------------------- helpers
def _as_config(voxelopt, config):
    if config is None:
        return voxelopt.RegistrationConfig.preset(voxelopt.config.DEFAULT_PRESET)
    if isinstance(config, voxelopt.RegistrationConfig):
        return config
    if isinstance(config, Mapping):
        return voxelopt.RegistrationConfig.from_dict(dict(config))
    raise TypeError(f"config must be a voxelopt.RegistrationConfig, a dict or None, got {type(config).__name__}")


def _check_node_kinds(nodes: Mapping[str, Tuple[Any, Tuple[str, ...]]], required: bool = False) -> None:
    """Refuse, for each ``{role: (node, classes)}``, anything but an MRML node of one of
    ``classes`` (e.g. a volume's name, or a model node as the initial transform, given by a batch
    script), before any method of it is called; None passes unless ``required``."""
    for role, (node, classes) in nodes.items():
        if node is None and not required:
            continue
        is_a = getattr(node, "IsA", None)
        if callable(is_a) and any(is_a(name) for name in classes):
            continue
        kind = node.GetClassName() if callable(getattr(node, "GetClassName", None)) else type(node).__name__
        named = f" '{node.GetName()}'" if callable(getattr(node, "GetName", None)) else ""
        raise InputNodeError(f"the {role}{named} must be a {' or '.join(classes)}, got {kind}")


def _check_qa_volumes(fixed_volume, warped_volume) -> None:
    """Refuse anything but two scalar volume nodes with voxels for a visual-QA volume."""
    _check_node_kinds({"fixed volume": (fixed_volume, ("vtkMRMLScalarVolumeNode",)),
                       "warped volume": (warped_volume, ("vtkMRMLScalarVolumeNode",))}, required=True)
    for role, node in (("fixed volume", fixed_volume), ("warped volume", warped_volume)):
        if node.GetImageData() is None:
            raise InputNodeError(f"the {role} '{node.GetName()}' has no voxels")


def _check_output_classes(outputs: RegistrationOutputs) -> None:
    """Refuse an output node of a class the result cannot be written into: the classes the
    parameter node accepts for that output (:data:`parameters.NODE_PARAMETERS`)."""
    for field, name in _OUTPUT_PARAMETERS.items():
        node, parameter = getattr(outputs, field), parameters.NODE_BY_NAME[name]
        if node is None or parameters.accepts(parameter, node):
            continue
        if field == "transform":
            raise InputNodeError(
                f"output transform '{node.GetName()}' is a {node.GetClassName()}; the displacement field needs a "
                "grid transform node (vtkMRMLGridTransformNode): choose one, or leave the output transform empty "
                "to create a new one"
            )
        if node.IsA("vtkMRMLLabelMapVolumeNode"):  # a label map volume as a map's output
            raise InputNodeError(f"output {field} '{node.GetName()}' is a label map; choose a scalar volume")
        if any(node.IsA(c) for c in parameter.excluded):  # e.g. a vector or tensor volume
            raise InputNodeError(f"output {field} '{node.GetName()}' is a {node.GetClassName()}, which holds several "
                                 "values per voxel; choose a scalar volume (vtkMRMLScalarVolumeNode)")
        raise InputNodeError(f"output {field} '{node.GetName()}' is a {node.GetClassName()}, a "
                             f"{' or '.join(parameter.classes)} is needed")


def _check_nodes_in_scene(scene, inputs: Mapping[str, Any], outputs: RegistrationOutputs) -> None:
    """Refuse an input node (``inputs``: {role: node or None}) or an output node that is not in
    the logic's ``scene``: deleted from it, or a node of another scene (a result written there
    would not be seen, and the moving volume would be put under a transform its scene lacks)."""
    for role, node in inputs.items():
        if node is not None and node.GetScene() is not scene:
            raise InputNodeError(f"the {role} '{node.GetName()}' is not in the scene (it was deleted, or belongs to "
                                 f"another scene); choose a {role} of this scene")
    for field in _OUTPUT_PARAMETERS:
        node = getattr(outputs, field)
        if node is not None and node.GetScene() is not scene:
            raise InputNodeError(
                f"output {field} '{node.GetName()}' is not in the scene (it was deleted, or belongs to another "
                f"scene), so the result would not be seen. Choose a node of this scene for output {field}, or leave "
                "it empty to create a new one"
            )


def _check_input_volumes(fixed_volume, moving_volume) -> None:
    """Refuse a label map volume, or a volume of several values per voxel, as the fixed or moving
    volume, and one volume as both (a missing
    volume is reported by the volume checks of :meth:`RegistrationLogic.prepare`)."""
    for role, node in (("fixed", fixed_volume), ("moving", moving_volume)):
        if node is not None and node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InputNodeError(
                f"{role} volume '{node.GetName()}' is a label map volume (segment labels, not an image); choose the "
                f"{role} image (e.g. the CT) as the {role} volume. A label map belongs in the {role} segmentation "
                f"(import it into a segmentation node: Data module, right-click > Convert labelmap to segmentation) "
                f"or the {role} mask"
            )
        if node is not None and any(node.IsA(c) for c in parameters.NOT_SCALAR_IMAGE):
            raise InputNodeError(f"{role} volume '{node.GetName()}' is a {node.GetClassName()}, which holds several "
                                 f"values per voxel; VoxelOpt registers scalar images (e.g. CT): choose one as the "
                                 f"{role} volume")
    if fixed_volume is not None and fixed_volume is moving_volume:
        raise InputNodeError(
            f"volume '{fixed_volume.GetName()}' is both the fixed and the moving volume; choose the volume to "
            "register onto it as the moving volume"
        )


def _check_outputs_are_not_inputs(outputs: RegistrationOutputs, inputs: Mapping[str, Any]) -> None:
    """Refuse an output node that is also an input node (``inputs``: {role: node or None}), which the
    run would overwrite, and one node chosen for two outputs."""
    chosen: List[Tuple[str, Any]] = []  # (output field, node) so far
    for field in _OUTPUT_PARAMETERS:
        node = getattr(outputs, field)
        if node is None:
            continue
        for role, input_node in inputs.items():
            if input_node is node:
                raise InputNodeError(
                    f"output {field} '{node.GetName()}' is also the {role}: the run would overwrite it. Choose "
                    f"another node for output {field}, or leave it empty to create a new one"
                )
        for other_field, other in chosen:
            if other is node:
                raise InputNodeError(
                    f"node '{node.GetName()}' is chosen for two outputs, {other_field} and {field}; choose a "
                    "different node for each output, or leave them empty to create new ones"
                )
        chosen.append((field, node))


def _check_output_parents(outputs: RegistrationOutputs) -> None:
    """Refuse an output node that sits under a transform (the nodes are the user's: they are not
    moved): an output transform would show the moving volume through both transforms, not as the
    registration warped it; a volume or segmentation, written on the fixed grid, would be shown
    moved away from it."""
    for field in _OUTPUT_PARAMETERS:
        node = getattr(outputs, field)
        parent = node.GetParentTransformNode() if node is not None and node.IsA("vtkMRMLTransformableNode") else None
        if parent is None:
            continue
        seen = ("the views would not show the moving volume as the registration warped it" if field == "transform"
                else "the views would show the result moved by it, away from the fixed volume it is written on")
        raise InputNodeError(
            f"output {field} '{node.GetName()}' is under transform '{parent.GetName()}', so {seen}. Take it out "
            f"of '{parent.GetName()}' (Data module: drag it to the scene's top level), or leave the output "
            f"{field} empty to create a new one"
        )


def _result_warnings(request: RegistrationRequest, metrics: Mapping[str, Any], given: Mapping[str, Any],
                     deleted: Mapping[str, Any], written: Mapping[str, Any]) -> List[str]:
    """The warnings about what a run wrote: with both segmentations, the segments the Dice table
    leaves out or the warp lost (:func:`.segmentations.unscored_warnings`); then, per output node
    the run was given (``given``: {output field: node or None}), one deleted during the run
    (``deleted``: {output field: node}) with the new node now holding it (``written``: {output
    field: node written, or None}), or one the run did not write, so that an earlier run's
    content in it is not taken for this run's result (the node is left as it is: it is the user's)."""
    warnings = []
    if request.fixedSegmentation is not None and request.movingSegmentation is not None:
        from . import segmentations

        warnings += segmentations.unscored_warnings(request.labelNames, request.unmatchedSegments,
                                                    request.engineInputs.fixed_labels, request.engineInputs.moving_labels,
                                                    metrics)
    for field, node in given.items():
        if node is None:
            continue
        if field in deleted:
            if written[field] is not None:  # e.g. no warped volume asked for: nothing was lost
                warnings.append(f"output {field} '{node.GetName()}' was deleted during the registration: the result is "
                                f"in the new node '{written[field].GetName()}'")
        elif written[field] is None:
            warnings.append(f"output {field} '{node.GetName()}' was not written by this run "
                            f"({_NOT_MADE_BECAUSE.get(field, 'not made')}): it still holds an earlier result")
    return warnings


#: Why a run makes no node for an output it was given (see :func:`_result_warnings`).
_NOT_MADE_BECAUSE = {
    "warpedVolume": "no warped volume was asked for",
    "warpedSegmentation": "no moving segmentation was given",
    "diceTable": "the two segmentations share no scored segment, or one of them was not given",
}


def _write_on_fixed_grid(node, image, fixed_volume, share: bool = True) -> None:
    """Store an engine image (on the fixed grid, made for this node) in ``node`` with exactly the
    fixed node's geometry; with ``share`` the node's voxels are the image's own (no copy on the GUI
    thread), else a copy."""
    from . import volumes

    volumes.update_volume_node_from_sitk(node, image, share=share)
    fixed_dims = tuple(fixed_volume.GetImageData().GetDimensions())
    if tuple(node.GetImageData().GetDimensions()) != fixed_dims:
        raise RuntimeError(
            f"the engine returned an image of size {node.GetImageData().GetDimensions()} for '{node.GetName()}', "
            f"expected the fixed grid {fixed_dims}"
        )
    node.CopyOrientation(fixed_volume)  # bit-identical IJK->RAS (no LPS/RAS round-off)


def _copy_window(source, target) -> None:
    """Give ``target`` the window/level of ``source``; nothing when either display node has none
    (e.g. a label map's display node)."""
    src, dst = source.GetDisplayNode(), target.GetDisplayNode()
    if src is not None and dst is not None and all(
            node.IsA("vtkMRMLScalarVolumeDisplayNode") for node in (src, dst)):
        dst.SetAutoWindowLevel(False)
        dst.SetWindowLevel(src.GetWindow(), src.GetLevel())


def _check_display(overlay: str, opacity: float, parameterNode=None) -> None:
    """Refuse an unknown overlay or an opacity outside [0, 1] (an InputNodeError, a ValueError), naming
    the parameter node when the values are its own."""

    def label(name: str) -> str:
        return f"parameter '{name}' of parameter node '{parameterNode.GetName()}'" if parameterNode is not None else name

    if overlay not in parameters.OVERLAY_CHOICES:
        raise InputNodeError(f"{label('overlay')} must be one of {', '.join(parameters.OVERLAY_CHOICES)}, got {overlay!r}; "
                             "choose one of them")
    if isinstance(opacity, bool) or not isinstance(opacity, numbers.Real) or not 0.0 <= opacity <= 1.0:
        raise InputNodeError(f"{label('overlayOpacity')} must be a number in [0, 1], got {opacity!r}; set an opacity "
                             "from 0 to 1")


def _label_scores(metrics: Mapping[str, Any]) -> Tuple[Dict[int, float], Dict[int, float]]:
    """({label: Dice 0-1}, {label: HD95 mm}) from the engine's metrics.

    The only place that reads label scores: they are computed by the engine's scoring
    (``voxelopt.metrics.label_metrics``, called by ``voxelopt.register`` with both label maps).
    """

    def per_label(metric) -> Dict[int, float]:
        return {int(key): float(value) for key, value in metric.items()} if isinstance(metric, Mapping) else {}

    return per_label(metrics.get("dice")), per_label(metrics.get("hd95_mm"))


def _content_key(node) -> Tuple[Any, ...]:
    """What changes with everything of an input node that a run reads, cheaply (no voxel is read).

    * volume: its image data's modification time and its IJK -> RAS matrix (spacing, origin, axes);
    * segmentation: the segmentation's modification time (segments added, removed), and per
      segment in order its ID, its modification time (name, colour) and that of its source
      representation (the voxels of its labelmap layer, edited by the Segment Editor or
      ``SetBinaryLabelmapToSegment``, or modified in place and marked with ``Modified()``);
    * transform: its FromParent transform's modification time;
    * None: ().
    """
    if node is None:
        return ()
    if node.IsA("vtkMRMLVolumeNode"):
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        image = node.GetImageData()
        return (image.GetMTime() if image is not None else None,
                tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4)))
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        source = segmentation.GetSourceRepresentationName()
        segments = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            data = segment.GetRepresentation(source)
            segments.append((segmentation.GetNthSegmentID(index), segment.GetMTime(),
                             data.GetMTime() if data is not None else None))
        return (segmentation.GetMTime(), source, tuple(segments))
    if node.IsA("vtkMRMLTransformNode") and node.GetTransformFromParent() is not None:
        return (node.GetTransformFromParent().GetMTime(),)
    return (node.GetMTime(),)
