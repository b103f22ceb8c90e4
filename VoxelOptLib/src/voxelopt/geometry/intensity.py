"""The HU window (numpy arrays and torch tensors alike; no torch import)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def window_hu(x, window: Sequence[float]):
    """Clip HU values to ``window`` = (low, high) and scale linearly to [0, 1].

    ``x`` is a numpy array or a torch tensor; the result has the same type.
    """
    low, high = (float(v) for v in window)
    clipped = x.clamp(low, high) if hasattr(x, "clamp") else np.clip(x, low, high)
    return (clipped - low) / (high - low)
