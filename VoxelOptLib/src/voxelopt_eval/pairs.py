"""Which pairs to register: a pairs CSV, or a subject list expanded to all ordered pairs.

Two CSV layouts are accepted (a header row is required; paths are relative to the CSV's folder
unless absolute):

* **pairs**: columns ``fixed, moving, fixed_labels, moving_labels`` and optionally ``id`` (a
  pair name) and ``gt_field`` (a ground-truth displacement field on the fixed grid, LPS mm,
  ``fixed(x) = moving(x + gt(x))``; its mean error is then reported);
* **subjects**: columns ``image, labels`` and optionally ``id``. Every ordered pair of distinct
  subjects is registered, ``n * (n - 1)`` pairs, in the order of ``itertools.permutations``
  with the first subject *moving* and the second *fixed* (the paper's 7 x 6 test protocol).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from voxelopt.digest import file_digest
from voxelopt.errors import InputError

PAIR_COLUMNS = ("fixed", "moving", "fixed_labels", "moving_labels")
SUBJECT_COLUMNS = ("image", "labels")


@dataclasses.dataclass(frozen=True)
class PairSpec:
    """One registration problem: ``moving`` is registered onto ``fixed``.

    Attributes:
        pair_id: unique name of the pair (used for the per-pair result files).
        fixed, moving: image paths (absolute).
        fixed_labels, moving_labels: label map paths (absolute), or None.
        gt_field: optional ground-truth displacement field path (LPS mm, on the fixed grid,
            resampling direction), or None.
    """

    pair_id: str
    fixed: str
    moving: str
    fixed_labels: Optional[str] = None
    moving_labels: Optional[str] = None
    gt_field: Optional[str] = None

    def file_stem(self) -> str:
        """``pair_id`` made safe as a file name."""
        return safe_name(self.pair_id)

    def content_digests(self) -> Dict[str, str]:
        """A digest of each input's content by attribute (:func:`content_digest`): a stored result
        is reused only for the same files with the same contents, not merely the same names."""
        paths = {name: getattr(self, name) for name in ("fixed", "moving", "fixed_labels", "moving_labels", "gt_field")}
        return {name: content_digest(path) for name, path in paths.items() if path is not None}


#: :func:`content_digest`'s results by (path, size, modification time): each file read once per process.
_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def content_digest(path: str) -> str:
    """A digest (BLAKE2b, 128 bit) of a file's bytes, or of a folder's files (a DICOM series: their
    names and bytes, in name order); "missing" for a path that does not exist (the job then fails
    with the reader's message). Kept per process by path, size and modification time."""
    target = Path(path)
    if not target.exists():
        return "missing"
    files = sorted(p for p in target.iterdir() if p.is_file()) if target.is_dir() else [target]
    h = hashlib.blake2b(digest_size=16)
    for file in files:
        stat = file.stat()
        memo = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in _DIGESTS:
            _DIGESTS[memo] = file_digest(file, hashlib.blake2b(digest_size=16))
        h.update(file.name.encode() + b"\0" + _DIGESTS[memo].encode())
    return h.hexdigest()


def safe_name(text: str) -> str:
    """Letters, digits, ``._-`` kept; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unnamed"


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _resolve(value: str, base: Path, row_number: int, column: str, must_exist: bool) -> str:
    value = value.strip()
    if not value:
        raise InputError(f"row {row_number}: column '{column}' is empty")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    if must_exist and not path.exists():
        raise InputError(f"row {row_number}: {column} file {path} does not exist")
    return str(path.resolve())


def _optional(row: Dict[str, str], column: str) -> Optional[str]:
    value = (row.get(column) or "").strip()
    return value or None


def read_pairs(csv_path: str, check_files: bool = True) -> List[PairSpec]:
    """Read a pairs CSV or a subject-list CSV (detected from the header) into pair specs.

    Args:
        csv_path: the CSV file; relative paths inside are resolved against its folder.
        check_files: fail when a referenced file does not exist.

    Raises:
        InputError: unreadable CSV, unknown layout, missing or empty required column, duplicate
            ids, fewer than two subjects, or a missing file.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM (Excel) is no part of a name
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read pairs file {path}: {error}") from None
    base = path.parent.resolve()
    _check_no_misspelled_column(header, path)
    if set(PAIR_COLUMNS) <= set(header):
        pairs = [_pair_from_row(row, n, base, check_files) for n, row in enumerate(rows, start=2)]
    elif set(SUBJECT_COLUMNS) <= set(header) or "image" in header:
        subjects = [_subject_from_row(row, n, base, check_files) for n, row in enumerate(rows, start=2)]
        pairs = all_ordered_pairs(subjects)
    else:
        raise InputError(
            f"{path}: unknown CSV layout (header {header}); expected the columns "
            f"{', '.join(PAIR_COLUMNS)} (one pair per row) or {', '.join(SUBJECT_COLUMNS)} (a subject list, "
            "registered as all ordered pairs)"
        )
    if not pairs:
        raise InputError(f"{path} lists no pairs")
    _check_unique([p.pair_id for p in pairs], path)
    return pairs


#: Every column the two layouts read; other columns are the user's own and are ignored.
KNOWN_COLUMNS = PAIR_COLUMNS + ("gt_field", "id") + SUBJECT_COLUMNS


def _check_no_misspelled_column(header: Sequence[str], path: Path) -> None:
    """InputError for a column that is not read but is close to a known one the header lacks
    (``label`` for ``labels``): it would be ignored, and its files silently not used."""
    for column in header:
        if column in KNOWN_COLUMNS:
            continue
        close = [c for c in difflib.get_close_matches(column.lower(), KNOWN_COLUMNS, n=3, cutoff=0.75) if c not in header]
        if close:
            raise InputError(f"{path}: column {column!r} is not one the evaluation reads; did you mean {close[0]!r}? "
                             f"(columns read: {', '.join(KNOWN_COLUMNS)}; other columns are ignored)")


def _pair_from_row(row: Dict[str, str], n: int, base: Path, check: bool) -> PairSpec:
    fixed = _resolve(row.get("fixed") or "", base, n, "fixed", check)
    moving = _resolve(row.get("moving") or "", base, n, "moving", check)
    labels = {}
    for column in ("fixed_labels", "moving_labels", "gt_field"):
        value = _optional(row, column)
        labels[column] = _resolve(value, base, n, column, check) if value else None
    if (labels["fixed_labels"] is None) != (labels["moving_labels"] is None):
        raise InputError(f"row {n}: give both fixed_labels and moving_labels, or neither")
    pair_id = _optional(row, "id") or f"{_stem(fixed)}<-{_stem(moving)}"
    return PairSpec(pair_id, fixed, moving, labels["fixed_labels"], labels["moving_labels"], labels["gt_field"])


@dataclasses.dataclass(frozen=True)
class _Subject:
    subject_id: str
    image: str
    labels: Optional[str]


def _subject_from_row(row: Dict[str, str], n: int, base: Path, check: bool) -> _Subject:
    image = _resolve(row.get("image") or "", base, n, "image", check)
    labels_value = _optional(row, "labels")
    labels = _resolve(labels_value, base, n, "labels", check) if labels_value else None
    return _Subject(_optional(row, "id") or _stem(image), image, labels)


def all_ordered_pairs(subjects: Sequence[_Subject]) -> List[PairSpec]:
    """Every ordered pair (moving, fixed) of distinct subjects, ``itertools.permutations`` order."""
    if len(subjects) < 2:
        raise InputError(f"a subject list needs at least two subjects, got {len(subjects)}")
    _check_unique([s.subject_id for s in subjects], "the subject list")
    return [
        PairSpec(f"{fixed.subject_id}<-{moving.subject_id}", fixed.image, moving.image, fixed.labels, moving.labels)
        for moving, fixed in itertools.permutations(subjects, 2)
    ]


def _check_unique(ids: Sequence[str], where: object) -> None:
    seen = set()
    for pair_id in ids:
        key = safe_name(pair_id)
        if key in seen:
            raise InputError(f"{where}: id {pair_id!r} occurs twice (ids must be unique, also as file names)")
        seen.add(key)


def write_subject_list(csv_path: str, subjects: Sequence[Dict[str, str]]) -> Path:
    """Write a subject-list CSV (columns id, image, labels); paths are stored relative to it when possible."""
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "labels"])
        writer.writeheader()
        for subject in subjects:
            row = {}
            for key in ("id", "image", "labels"):
                value = str(subject.get(key, ""))
                if key != "id" and value:
                    try:
                        value = str(Path(value).resolve().relative_to(path.parent.resolve()))
                    except ValueError:
                        pass
                row[key] = value
            writer.writerow(row)
    return path
