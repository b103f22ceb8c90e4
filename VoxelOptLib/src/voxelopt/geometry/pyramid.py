"""The shapes of the solver's pyramid levels (no torch: the input checks use them first)."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from ..errors import InputError

#: An axis is halved for the next level only while it keeps at least this many voxels.
MIN_LEVEL_SIZE = 4

Shape = Tuple[int, int, int]


def level_shapes(shape: Sequence[int], levels: int) -> List[Shape]:
    """Array shapes of the pyramid, finest first.

    Each level halves (rounding down) every axis that keeps at least ``MIN_LEVEL_SIZE`` voxels;
    thin axes stay as they are. Raises :class:`InputError` when the image is too small for
    ``levels`` distinct levels.
    """
    shapes = [tuple(int(n) for n in shape)]
    if min(shapes[0]) < 2:
        raise InputError(f"the working grid {shapes[0]} (z, y, x) is too small: every axis needs at least 2 voxels; "
                         "use a finer working resolution (a smaller feature spacing or a larger working scale)")
    for level in range(1, levels):
        previous = shapes[-1]
        nxt = tuple(n // 2 if n // 2 >= MIN_LEVEL_SIZE else n for n in previous)
        if nxt == previous:
            raise InputError(
                f"the image is too small for {levels} pyramid levels: the working grid {shapes[0]} (z, y, x) "
                f"allows at most {level} (no axis of {previous} can be halved and keep {MIN_LEVEL_SIZE} voxels); "
                "use fewer levels or a finer working resolution"
            )
        shapes.append(nxt)
    return shapes
