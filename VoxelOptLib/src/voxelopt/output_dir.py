"""Output folders: checked before any work, written all or nothing, never over an input.

Plain Python (the command line checks its output paths before loading numpy, SimpleITK or
torch). :func:`atomic_output_dir` writes every file into a hidden temporary folder first and
moves them into place only when all were written, so a failure leaves no partial output and
the folder as it was; :func:`check_output_targets` refuses, before anything is written, an
output that would replace or remove one of the run's input files, or a folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

from .errors import InputError, OutputError, VoxelOptError

#: A file or folder path (the library's one alias for it; :mod:`voxelopt.io` re-exports it).
PathLike = Union[str, "os.PathLike[str]"]


def check_output_dir(path: Path, what: str = "output directory") -> None:
    """Fail before any work if directory ``path`` (``what`` names it in the message) cannot be
    created or written: the permissions of ``path`` or of its nearest existing parent, then
    :func:`_check_takes_new_files` there. Leaves nothing behind."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InputError(f"{what} {path}: {existing} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} cannot be written (no write permission on {existing})")
    _check_takes_new_files(existing, path, what)


def _check_takes_new_files(folder: Path, path: Path, what: str) -> None:
    """InputError unless an entry can be made in ``folder`` (``path`` itself or its nearest existing
    parent): a hidden folder made and removed again. Permissions do not tell, e.g. for /proc or a
    read-only mount as root."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".voxelopt-write-test-", dir=folder))
    except OSError as error:
        where = "there" if folder == path else f"in {folder}"
        raise InputError(f"{what} {path} does not take new files (creating one {where} failed: "
                         f"{error.strerror or error})") from None


def ensure_writable_dir(path: PathLike, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that files can be written there (``what`` names it in
    the :class:`InputError` otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{what} {path} cannot be created: {error.strerror or error}") from None
    _check_takes_new_files(path, path, what)
    return path


def check_output_targets(out_dir: PathLike, written: Iterable[str], removed: Iterable[str] = (),
                         inputs: Iterable[Optional[PathLike]] = ()) -> None:
    """Refuse (:class:`InputError`), before anything is written, outputs that would destroy
    something: a name of ``written`` that is a folder in ``out_dir``, or a file of ``out_dir``
    named in ``written`` or ``removed`` that is one of this run's ``inputs`` (e.g. registering
    onto the ``warped.nii.gz`` of an earlier run with the same output folder)."""
    out_dir = Path(out_dir)
    written = list(written)
    for name in written:
        if (out_dir / name).is_dir():
            raise InputError(f"{out_dir / name} is a folder, where the output {name} would be written: "
                             "remove it or choose another output directory")
    inputs = list(inputs)
    for name in dict.fromkeys(written + list(removed)):
        target = out_dir / name
        source = input_at(target, inputs)
        if source is not None:
            fate = "replace it" if name in written else (
                "remove it (a file named like an output that this run does not write is taken for an "
                "earlier run's)")
            given = "" if str(source) == str(target) else f" ({source})"
            raise InputError(f"{target} is one of this run's inputs{given}: writing the outputs to {out_dir} "
                             f"would {fate}; choose another output directory")


def input_at(target: PathLike, inputs: Iterable[Optional[PathLike]]) -> Optional[Path]:
    """The path among ``inputs`` (None entries skipped) that is the existing file ``target``
    itself (the same file, under any name or link), or None."""
    target = Path(target)
    if not target.is_file():
        return None
    for source in (Path(source) for source in inputs if source):
        if source.exists() and os.path.samefile(target, source):
            return source
    return None


@contextlib.contextmanager
def atomic_output_dir(out_dir: PathLike, stale: Sequence[str] = (),
                      inputs: Iterable[Optional[PathLike]] = ()) -> Iterator[Path]:
    """Yield a temporary folder inside ``out_dir``; on success move its files into ``out_dir``.

    On success, files of ``out_dir`` named in ``stale`` that this run did not write are removed
    (outputs of an earlier run that would otherwise look like this run's). Nothing of ``inputs``
    (this run's input files) is replaced or removed, and no folder is replaced: either is an
    :class:`InputError` (:func:`check_output_targets`; for ``stale`` before the caller writes,
    for the written names before anything moves). On any exception the temporary folder is
    removed and ``out_dir`` is left as it was: files already moved in are taken out again and
    the files they replaced or that were removed as stale put back (a folder created for the
    purpose is removed again); an :class:`OSError` (a full disk...) is raised again as an
    :class:`~voxelopt.errors.OutputError`, which says so.
    """
    out_dir = Path(out_dir)
    inputs = list(inputs)
    check_output_targets(out_dir, (), stale, inputs)
    created = not out_dir.exists()
    ensure_writable_dir(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=".voxelopt-partial-", dir=out_dir))
    replaced = staging / ".replaced"  # the files this run replaces or removes, until it is done
    moved_in: List[str] = []
    set_aside: List[str] = []
    try:
        yield staging
        written = sorted(item.name for item in staging.iterdir() if item != replaced)
        check_output_targets(out_dir, written, (), inputs)
        replaced.mkdir()
        gone = [name for name in stale if name not in written and (out_dir / name).is_file()]
        for name in written + gone:
            if os.path.lexists(out_dir / name):
                os.replace(out_dir / name, replaced / name)
                set_aside.append(name)
            if name in written:
                os.replace(staging / name, out_dir / name)
                moved_in.append(name)
    except BaseException:
        for name in moved_in:
            with contextlib.suppress(OSError):
                os.unlink(out_dir / name)
        for name in set_aside:
            with contextlib.suppress(OSError):
                os.replace(replaced / name, out_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and not isinstance(error, VoxelOptError):
            raise OutputError(f"writing the outputs to {out_dir} failed ({error}); the folder is left as it was"
                              ) from error
        raise
    shutil.rmtree(staging, ignore_errors=True)
