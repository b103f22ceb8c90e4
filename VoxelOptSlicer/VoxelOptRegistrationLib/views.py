"""Slice-view setup for the results, through MRML slice composite and slice nodes only.

Works the same in desktop Slicer, in ``Slicer --no-main-window`` (no views: nothing to do) and in
headless ``slicer-core``/``trame-slicer`` scenes (their slice views have MRML nodes too).

Two entry points, so that the user's view is disturbed only when a run shows a new volume:

* :func:`show_result` (after a registration): the fixed volume as background, the overlay as
  foreground; a view is fitted to its volumes only when its background volume changed.
* :func:`show_overlay` (a display parameter changed): the foreground layer and its opacity only;
  background, field of view and slice offset are left as the user set them.
"""

from typing import List

from .colors import legend_nodes


def slice_composite_nodes(scene) -> List[object]:
    """All ``vtkMRMLSliceCompositeNode`` s of the scene (one per slice view); empty when headless."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _check_opacity(opacity: float) -> None:
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")


def show_overlay(scene, foreground=None, opacity: float = 0.5, additive: bool = False) -> int:
    """Show ``foreground`` (a volume node, or None to clear) at ``opacity`` (0-1) in every slice view.

    Only the foreground layer changes. ``additive``: the foreground is added to the background
    (black adds nothing) instead of alpha-blended. The foreground's colour legend (see
    :func:`colors.color_legend`) appears in the views with it, another volume's goes. Returns the
    number of slice views (0 without views).
    """
    _check_opacity(opacity)
    composites = slice_composite_nodes(scene)
    foreground_id = foreground.GetID() if foreground is not None else None
    shown = {composite.GetForegroundVolumeID() for composite in composites} | {foreground_id}
    for composite in composites:
        was_modifying = composite.StartModify()
        composite.SetForegroundVolumeID(foreground_id)
        composite.SetForegroundOpacity(float(opacity))
        composite.SetCompositing(composite.Add if additive else composite.Alpha)
        composite.EndModify(was_modifying)
    for volume in (scene.GetNodeByID(node_id) for node_id in shown if node_id):
        for legend in legend_nodes(volume) if volume is not None else ():
            legend.Modified()  # its displayable manager shows or hides it by the views' new layers
    return len(composites)


def show_result(scene, background, foreground=None, opacity: float = 0.5, additive: bool = False) -> int:
    """Show ``background`` (the fixed volume) under ``foreground`` at ``opacity`` in every slice view.

    A view whose background was another volume is fitted to the new one (field of view and
    offset); a view already showing ``background`` keeps its zoom and slice. Returns the number of
    slice views updated (0 when there is none, e.g. in a batch run).
    """
    _check_opacity(opacity)
    changed = []
    for composite in slice_composite_nodes(scene):
        if composite.GetBackgroundVolumeID() != background.GetID():
            composite.SetBackgroundVolumeID(background.GetID())
            changed.append(composite.GetLayoutName())
    count = show_overlay(scene, foreground, opacity, additive)
    for layout_name in changed:
        fit_slice_view(scene, layout_name)
    return count


def _slice_node(scene, layout_name: str):
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if node.GetLayoutName() == layout_name:
            return node
    return None


def fit_slice_view(scene, layout_name: str) -> None:
    """Fit the slice view ``layout_name`` to its volumes (Slicer's "reset field of view")."""
    slice_node = _slice_node(scene, layout_name)
    if slice_node is None:
        return
    logic = _application_slice_logic(layout_name)
    if logic is None:  # headless: a temporary slice logic on the same MRML nodes
        import slicer

        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(slice_node)
    logic.FitSliceToAll()


def _application_slice_logic(layout_name: str):
    """The slice logic of desktop Slicer's view ``layout_name``; None without the application."""
    import slicer

    app = getattr(slicer, "app", None)
    layout_manager = app.layoutManager() if app is not None and hasattr(app, "layoutManager") else None
    widget = layout_manager.sliceWidget(layout_name) if layout_manager is not None else None
    return widget.sliceLogic() if widget is not None else None
