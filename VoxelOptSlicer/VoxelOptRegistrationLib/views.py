"""Slice-view setup for the results, through MRML slice composite nodes only.

Works the same in desktop Slicer, in ``Slicer --no-main-window`` (no views: nothing to do) and in
headless ``slicer-core``/``trame-slicer`` scenes (their slice views have composite nodes too).
"""

from typing import List, Optional


def slice_composite_nodes(scene) -> List[object]:
    """All ``vtkMRMLSliceCompositeNode`` s of the scene (one per slice view); empty when headless."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def show_in_slice_views(scene, background, foreground=None, opacity: float = 0.5, label=None) -> int:
    """Show ``background`` in every slice view with ``foreground`` on top at ``opacity`` (0-1).

    Args:
        scene: the MRML scene.
        background: volume node for the background layer (the fixed volume), or None to keep it.
        foreground: volume node for the foreground layer (an overlay), or None to clear it.
        opacity: foreground opacity, 0 (invisible) to 1 (opaque).
        label: optional label map volume node for the label layer.

    Returns:
        The number of slice views updated (0 when there is none, e.g. in a batch run).
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    composites = slice_composite_nodes(scene)
    for composite in composites:
        was_modifying = composite.StartModify()
        if background is not None:
            composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(opacity))
        if label is not None:
            composite.SetLabelVolumeID(label.GetID())
        composite.EndModify(was_modifying)
    _fit_views_if_app()
    return len(composites)


def _fit_views_if_app() -> None:
    """Reset the field of view of the slice views in desktop Slicer; no-op without the application."""
    try:
        import slicer

        app = getattr(slicer, "app", None)
        layout_manager = app.layoutManager() if app is not None else None
    except Exception:  # headless: no application or no layout manager
        return
    if layout_manager is None:
        return
    for name in layout_manager.sliceViewNames():
        layout_manager.sliceWidget(name).sliceLogic().FitSliceToAll()


def foreground_of_views(scene) -> Optional[str]:
    """The foreground volume ID shown in the first slice view (None when there is no view)."""
    composites = slice_composite_nodes(scene)
    return composites[0].GetForegroundVolumeID() if composites else None
