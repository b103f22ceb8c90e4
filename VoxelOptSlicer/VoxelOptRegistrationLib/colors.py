"""Colour tables of the VoxelOpt result maps, and how the maps are displayed.

Uninformative values must not wash out the CT. Slicer's slice views ignore a colour table's
alpha for scalar volumes, so:

* Entropy (nats): the perceptual, colour-blind-safe "inferno" map, from black (confident, low
  entropy of the displacement distribution) to light yellow (uncertain), alpha-blended, over
  the range of the informative voxels (:func:`entropy_display_range`). Only voxels whose
  distribution is flat (entropy at the map's maximum, ln L: air clipped by the HU window and
  padding, where there is nothing to register) are made transparent by the display threshold.
  The entropy of the body lies close to ln L (on the real CT B <- A: 2.5-3.29 nats for a
  maximum of 3.30), so a window from the map's minimum put most of it in the top quarter, and
  hiding the top 3 % of that window hid 16 % of the body's voxels (holes that read as "no
  problem here") with the air.
* Jacobian determinant (no unit): black at 1 (volume preserved), increasingly blue for
  compression (0 < det J < 1), increasingly red for expansion (det J > 1), and a saturated
  **green** band for folding (det J <= 0), which appears in no other part of the map. Shown
  with **additive** compositing (:data:`ADDITIVE_OVERLAYS`): black adds nothing, so the CT is
  untouched where the volume is preserved.

Both are ``vtkMRMLColorTableNode`` s (256 entries, no matplotlib needed); Slicer's own tables
(e.g. desktop Slicer's "Inferno") are not in slicer-core and none is black at a mid value. A scalar volume display
maps its window [min, max] linearly onto the table, so the display's window must be the one the
table was designed for (:data:`JACOBIAN_WINDOW`); :func:`show_jacobian` and :func:`show_entropy`
set it.
"""

from typing import List, Sequence, Tuple

import numpy as np

#: The inferno colour map (matplotlib, CC0) at 17 equally spaced points from 0 to 1.
INFERNO_ANCHORS = (
    (0.0015, 0.0005, 0.0139), (0.0423, 0.0281, 0.1411), (0.1293, 0.0473, 0.2908), (0.2383, 0.0366, 0.3964),
    (0.3415, 0.0623, 0.4294), (0.4412, 0.0993, 0.4316), (0.5409, 0.1347, 0.4151), (0.6401, 0.1714, 0.3811),
    (0.7357, 0.2159, 0.3302), (0.8224, 0.2752, 0.2661), (0.8943, 0.3534, 0.1936), (0.9470, 0.4492, 0.1153),
    (0.9784, 0.5579, 0.0349), (0.9879, 0.6753, 0.0653), (0.9746, 0.7977, 0.2063), (0.9476, 0.9174, 0.4107),
    (0.9884, 0.9984, 0.6449),
)

#: Display window of the Jacobian map: symmetric about 1, with room below 0 for the folding band.
JACOBIAN_WINDOW = (-0.5, 2.5)
#: Colour of folding voxels (det J <= 0).
FOLDING_RGB = (0.0, 0.9, 0.0)
COMPRESSION_RGB = (0.1, 0.35, 1.0)  # det J -> 0+
NEUTRAL_RGB = (0.0, 0.0, 0.0)  # det J = 1: adds nothing
EXPANSION_RGB = (1.0, 0.15, 0.1)  # det J = 2.5

ENTROPY_COLOR_NAME = "VoxelOpt entropy (inferno)"
JACOBIAN_COLOR_NAME = "VoxelOpt Jacobian (diverging at 1, folding green)"
COLOR_ROLE_ATTRIBUTE = "VoxelOpt.ColorRole"
#: Overlays shown with additive compositing (their uninformative values are black).
ADDITIVE_OVERLAYS = ("jacobian",)
#: Entropy within this fraction of the map's maximum of it is a flat distribution (not shown).
FLAT_ENTROPY_TOLERANCE = 1e-4
#: The colour window starts at this percentile of the informative voxels (those below the
#: flat value): a few very confident voxels would otherwise compress the rest of the map.
ENTROPY_WINDOW_PERCENTILE = 1.0
_PERCENTILE_SAMPLES = 1_000_000
TABLE_SIZE = 256


def inferno(n: int = TABLE_SIZE) -> np.ndarray:
    """(n, 3) RGB of the inferno map, linearly interpolated between :data:`INFERNO_ANCHORS`."""
    anchors = np.array(INFERNO_ANCHORS)
    t = np.linspace(0.0, 1.0, n)
    xs = np.linspace(0.0, 1.0, len(anchors))
    return np.stack([np.interp(t, xs, anchors[:, c]) for c in range(3)], axis=1)


def jacobian_table_value(index: int, n: int = TABLE_SIZE, window: Tuple[float, float] = JACOBIAN_WINDOW) -> float:
    """The det J value at the centre of table entry ``index`` (the window spread over ``n`` entries)."""
    low, high = window
    return low + (index + 0.5) * (high - low) / n


def jacobian_rgb(value: float) -> Tuple[float, float, float]:
    """Colour of a det J value (folding green, blue < 1 (black) < red)."""
    if value <= 0.0:
        return FOLDING_RGB
    high = JACOBIAN_WINDOW[1]
    if value < 1.0:
        t = value  # 0..1
        return tuple(float(c0 + (c1 - c0) * t) for c0, c1 in zip(COMPRESSION_RGB, NEUTRAL_RGB))
    t = min((value - 1.0) / (high - 1.0), 1.0)
    return tuple(float(c0 + (c1 - c0) * t) for c0, c1 in zip(NEUTRAL_RGB, EXPANSION_RGB))


def _find_color_node(scene, role: str):
    nodes = scene.GetNodesByClass("vtkMRMLColorTableNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetAttribute(COLOR_ROLE_ATTRIBUTE) == role:
            return node
    return None


def _table_node(scene, role: str, name: str, rgb: Sequence[Sequence[float]]):
    node = _find_color_node(scene, role)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
        node.SetAttribute(COLOR_ROLE_ATTRIBUTE, role)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(rgb))
    for i, (r, g, b) in enumerate(rgb):
        node.SetColor(i, f"{role} {i}", float(r), float(g), float(b), 1.0)
    return node


def entropy_color_node(scene):
    """The scene's VoxelOpt entropy colour table (created once, then reused)."""
    return _table_node(scene, "entropy", ENTROPY_COLOR_NAME, inferno())


def jacobian_color_node(scene):
    """The scene's VoxelOpt Jacobian colour table over :data:`JACOBIAN_WINDOW` (created once, then reused)."""
    rgb = [jacobian_rgb(jacobian_table_value(i)) for i in range(TABLE_SIZE)]
    return _table_node(scene, "jacobian", JACOBIAN_COLOR_NAME, rgb)


def _display(volume_node, color_node, window_min: float, window_max: float) -> None:
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    was_modifying = display.StartModify()
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(float(window_min), float(window_max))
    display.SetInterpolate(True)
    display.EndModify(was_modifying)


def show_jacobian(volume_node) -> None:
    """Display a det J volume with the diverging table and :data:`JACOBIAN_WINDOW`."""
    _display(volume_node, jacobian_color_node(volume_node.GetScene()), *JACOBIAN_WINDOW)


def entropy_display_range(entropy: np.ndarray) -> Tuple[float, float, float]:
    """(window low, window high, flat) of an entropy map (nats): voxels at or above ``flat`` (within
    :data:`FLAT_ENTROPY_TOLERANCE` of the maximum) have a flat distribution; the window spans the
    others, from their :data:`ENTROPY_WINDOW_PERCENTILE` th percentile to the maximum."""
    values = np.asarray(entropy, dtype=np.float64).ravel()
    top = float(values.max())
    flat = top - FLAT_ENTROPY_TOLERANCE * abs(top)
    informative = values[values < flat]
    if informative.size > _PERCENTILE_SAMPLES:  # a regular sample: the window is set on the GUI thread
        informative = informative[:: informative.size // _PERCENTILE_SAMPLES]
    low = float(np.percentile(informative, ENTROPY_WINDOW_PERCENTILE)) if informative.size else float(values.min())
    return low, max(top, low + 1e-6), flat


def show_entropy(volume_node, entropy: np.ndarray) -> None:
    """Display an entropy volume (nats; ``entropy``: its voxels) with inferno over the window of
    :func:`entropy_display_range`; its flat voxels (air, padding) are hidden by the display
    threshold, the others all shown (below the window: black)."""
    low, high, flat = entropy_display_range(entropy)
    _display(volume_node, entropy_color_node(volume_node.GetScene()), low, high)
    display = volume_node.GetDisplayNode()
    display.SetThreshold(-1.0, flat)  # entropy is >= 0 nats: every voxel below the flat value is shown
    display.ApplyThresholdOn()


#: Colour legend titles of the result maps (Slicer shows a volume's legend in the views that show it).
LEGEND_TITLES = {
    "entropy": "Entropy (nats)",
    "jacobian": "det J (green: folding)",
}
#: Legend size as fractions of the view (width, height): a narrow bar at the right edge.
LEGEND_SIZE = (0.12, 0.4)
LEGEND_CLASS = "vtkMRMLColorLegendDisplayNode"


def register_legend_class(scene) -> None:
    """Make colour legend display nodes known to ``scene``, as desktop Slicer's Colors module does
    for its scene (a slicer-core scene has no Colors module; a scene file holding legends is then
    not readable into it without this)."""
    import slicer

    if not scene.IsNodeClassRegistered(LEGEND_CLASS):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())


def legend_nodes(volume_node) -> List[object]:
    """The colour legend display nodes of ``volume_node`` (none for a node that is not displayable)."""
    count = volume_node.GetNumberOfDisplayNodes() if volume_node.IsA("vtkMRMLDisplayableNode") else 0
    nodes = (volume_node.GetNthDisplayNode(i) for i in range(count))
    return [node for node in nodes if node is not None and node.IsA(LEGEND_CLASS)]


def color_legend(volume_node, role: str):
    """The colour legend of ``volume_node``'s display (``role``: a key of :data:`LEGEND_TITLES`),
    made on first use, with its title; returns ``(legend node, created)``.

    Slicer's colour legend displayable manager draws it in every view that shows the volume, so
    the overlay being shown is the one whose legend appears. Built as desktop Slicer's Colors
    module does (``AddDefaultColorLegendDisplayNode``) from MRML alone: a legend display node on
    the volume, observing the volume's display node for its colours and window. The node class is
    registered in the scene when the Colors module has not (:func:`register_legend_class`)."""
    if role not in LEGEND_TITLES:
        raise ValueError(f"no colour legend for {role!r}; roles: {', '.join(LEGEND_TITLES)}")
    display = volume_node.GetVolumeDisplayNode()
    if display is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no display node to take a colour legend")
    for legend in legend_nodes(volume_node):
        if legend.GetPrimaryDisplayNode() is display:
            legend.SetTitleText(LEGEND_TITLES[role])
            return legend, False
    scene = volume_node.GetScene()
    register_legend_class(scene)
    legend = scene.AddNewNodeByClass(LEGEND_CLASS, f"{volume_node.GetName()} color legend")
    legend.SetTitleText(LEGEND_TITLES[role])
    legend.SetLabelFormat("%.2f")
    legend.SetSize(*LEGEND_SIZE)
    legend.SetAndObservePrimaryDisplayNode(display)
    volume_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.Modified()  # adding it to the volume does not update the legend's displayable manager
    return legend, True
