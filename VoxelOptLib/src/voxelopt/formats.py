"""Names of what a registration writes, and their formats (plain Python: the CLI's help and
argument checks use them without loading numpy, SimpleITK or torch)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple, Union

from .errors import InputError

#: Output file formats accepted for images and for the displacement field (``h5``: an ITK
#: ``DisplacementFieldTransform`` file).
IMAGE_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
FIELD_FORMATS = IMAGE_FORMATS + ("h5",)

#: The outputs a registration can write, in writing order ("labels": the warped moving labels).
OUTPUTS = ("field", "warped", "labels", "entropy", "jacobian", "metrics")

#: The file stem of each output (``<stem>.<format>``; stable: scripts rely on them).
OUTPUT_STEMS = {"field": "field", "warped": "warped", "labels": "warped_labels", "entropy": "entropy",
                "jacobian": "jacobian"}

#: Where the written field lives: its own grid (the solver's working grid, 4 mm by default) or
#: the full fixed grid.
FIELD_GRIDS = ("working", "fixed")


def check_format(fmt: str, allowed: Tuple[str, ...], what: str) -> str:
    """``fmt`` without a leading dot, or :class:`InputError` naming the allowed formats."""
    if not isinstance(fmt, str):
        raise InputError(f"the {what} format must be a name such as {allowed[0]!r}, got {fmt!r}")
    fmt = fmt.lstrip(".")
    if fmt not in allowed:
        raise InputError(f"unknown {what} format {fmt!r}; choose one of {', '.join(allowed)}")
    return fmt


def check_outputs(outputs: Union[None, str, Iterable[str]], with_labels: bool) -> Optional[Tuple[str, ...]]:
    """The chosen outputs in writing order (None: all), from names of :data:`OUTPUTS` or one
    comma-separated string (``"field,warped"``, as ``--outputs`` takes it); :class:`InputError`
    for an unknown name, none at all, or ``"labels"`` without moving labels (``with_labels``)."""
    if outputs is None:
        return None
    if isinstance(outputs, str):
        names = [n.strip() for n in outputs.split(",")]
    elif isinstance(outputs, (list, tuple, set, frozenset)) and all(isinstance(n, str) for n in outputs):
        names = [n.strip() for n in outputs]
    else:
        raise InputError(f"outputs must be output names (a list, or one comma-separated text) from "
                         f"{', '.join(OUTPUTS)}; got {outputs!r}")
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(OUTPUTS))
    if not names:
        raise InputError(f"no outputs given; choose one or more of {', '.join(OUTPUTS)}")
    if unknown:
        raise InputError(f"unknown output(s) {', '.join(unknown)}; choose from {', '.join(OUTPUTS)}")
    if "labels" in names and not with_labels:
        raise InputError("the 'labels' output (the warped moving labels) needs moving labels")
    return tuple(key for key in OUTPUTS if key in names)


def output_file_names(outputs: Iterable[str], image_format: str, field_format: str) -> Dict[str, str]:
    """The file name of each of ``outputs`` (names of :data:`OUTPUTS`): ``<stem>.<format>``
    (:data:`OUTPUT_STEMS`; the field in ``field_format``, the images in ``image_format``) and
    ``metrics.json``."""
    return {key: "metrics.json" if key == "metrics" else
            f"{OUTPUT_STEMS[key]}.{field_format if key == 'field' else image_format}" for key in outputs}


def every_output_file_name() -> Tuple[str, ...]:
    """Every file name an output may have, in any format: what an earlier run may have left in
    an output folder."""
    return tuple(f"{stem}.{fmt}" for stem in OUTPUT_STEMS.values() for fmt in FIELD_FORMATS) + ("metrics.json",)
