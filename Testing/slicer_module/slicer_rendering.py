"""Offscreen rendering of real Slicer slice views with trame-slicer (EGL, no display, no browser).

Used by ``test_rendering.py`` and ``render_docs_images.py``. trame-slicer's DirectViewFactory
renders Slicer's own slice view pipeline (vtkMRMLSliceLogic layers, colour tables, reslicing
through non-linear transforms) into an offscreen render window; the picture is read back with
vtkWindowToImageFilter.
"""

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import vtk  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

import slicer  # noqa: E402


def make_app(width: int = 480, height: int = 480, orientation: str = "Axial"):
    """(SlicerApp, slice view): a trame-slicer application with one offscreen slice view.

    Sets ``slicer.mrmlScene`` to the application's scene.
    """
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition, ViewProps, ViewType

    app = SlicerApp()
    slicer.mrmlScene = app.scene
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    view = app.view_manager.create_view(
        ViewLayoutDefinition(singleton_tag="Red", view_type=ViewType.SLICE_VIEW, properties=ViewProps(orientation=orientation))
    )
    view.render_window().SetSize(width, height)
    view.interactor().UpdateSize(width, height)
    return app, view


def set_layers(scene, background, foreground=None, opacity: float = 0.0, additive: bool = False) -> None:
    """Set every slice view's background directly (no fitting: pictures stay comparable) and its foreground."""
    from VoxelOptRegistrationLib import views

    for composite in views.slice_composite_nodes(scene):
        composite.SetBackgroundVolumeID(background.GetID())
    views.show_overlay(scene, foreground, opacity, additive)


def grab(view, fit: bool = False) -> np.ndarray:
    """The view's current picture as an (H, W, 3) uint8 array (row 0 at the top)."""
    if fit:
        view.fit_view_to_content()
    view.render()
    window = view.render_window()
    window.Render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(window)
    capture.ReadFrontBufferOff()
    capture.Update()
    image = capture.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
    return np.ascontiguousarray(pixels[::-1])


def save_png(pixels: np.ndarray, path: str, colors: int = 0) -> None:
    """Write an (H, W, 3) uint8 array as a PNG file; ``colors`` > 0: a palette of that many colours (smaller files)."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image = Image.fromarray(pixels)
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)


def saturation(pixels: np.ndarray) -> np.ndarray:
    """Per-pixel colourfulness (max - min channel, 0-255): 0 for grey, high for colour."""
    p = pixels.astype(np.int16)
    return p.max(axis=2) - p.min(axis=2)
