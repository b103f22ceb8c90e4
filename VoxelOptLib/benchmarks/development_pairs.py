"""The development pairs the benchmark scripts share (imported by scripts in this folder).

* ``real_ct_pairs``: the real CT of ``../shared/data/totalseg_ct``: B <- A (inter-patient; B is
  scanned over 40 mm of a 96 mm grid) and Adef <- A (A under a known smooth warp);
* ``pseudoct_pair``: label-derived pseudo-CT of BTCV subjects, made on first use with
  ``../shared/tools/make_pseudoct.py`` (192x160x256 at 2 mm) into ``WORK/pseudoct``.

A pair is ``(name, fixed_image, moving_image, fixed_labels, moving_labels)``, paths.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

Pair = Tuple[str, Path, Path, Path, Path]


def real_ct_pairs(shared: Path) -> List[Pair]:
    real = shared / "data" / "totalseg_ct"
    return [(f"real {fixed} <- {moving}",) + tuple(real / f"{case}_{kind}.nii.gz" for kind in ("img", "lab") for case in (fixed, moving))
            for fixed, moving in (("B", "A"), ("Adef", "A"))]


def pseudoct_pairs(shared: Path, work: Path, pairs: Sequence[Tuple[int, int]]) -> List[Pair]:
    """Pseudo-CT pairs (fixed subject, moving subject), the images made if needed."""
    data = work / "pseudoct"
    subjects = sorted({s for pair in pairs for s in pair})
    todo = [str(shared / "data" / "btcv_labels" / f"label{s:04d}.nii.gz") for s in subjects
            if not (data / f"case{s:04d}_img.nii.gz").exists()]
    if todo:
        subprocess.run([sys.executable, str(shared / "tools" / "make_pseudoct.py"), str(data)] + todo, check=True,
                       capture_output=True)
    return [(f"case{f:04d} <- case{m:04d}",) + tuple(data / f"case{s:04d}_{kind}.nii.gz" for kind in ("img", "lab") for s in (f, m))
            for f, m in pairs]
