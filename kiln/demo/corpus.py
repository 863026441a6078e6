"""The demo corpus: the running interpreter's standard library sources, split by file.

Every machine that runs Python has this corpus, so the demo model can be retrained anywhere without
a download. The split is a pure function of each file's relative path, so two machines with the same
Python version agree on which files were held out.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Directory names whose contents are test suites or third-party code, not the library itself.
EXCLUDED_DIR_NAMES = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
})

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceFile:
    """One stdlib source file: its path relative to the stdlib root, its split and its text."""

    rel_path: str
    split: str
    text: str


def stdlib_root() -> Path:
    """Return the directory that holds the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_excluded(rel_parts: tuple[str, ...]) -> bool:
    """Tell whether a file (given as the parts of its relative path) lies in a test or vendor dir."""
    return any(part in EXCLUDED_DIR_NAMES for part in rel_parts[:-1])


def split_of(rel_path: str, test_per_mille: int = 50, val_per_mille: int = 20) -> str:
    """Assign a file to 'test', 'val' or 'train' from a hash of its relative POSIX path.

    Hashing the path (not the content) keeps a file in the same split across patch releases that
    edit it; sha256 keeps the choice independent of PYTHONHASHSEED.
    """
    bucket = int.from_bytes(hashlib.sha256(rel_path.encode("utf-8")).digest()[:8], "big") % 1000
    if bucket < test_per_mille:
        return "test"
    if bucket < test_per_mille + val_per_mille:
        return "val"
    return "train"


def collect_stdlib_files(root: Path | None = None) -> list[SourceFile]:
    """Read every non-test ``*.py`` under the stdlib root, sorted by relative path.

    Files that are not valid UTF-8 are skipped (PEP 3120 makes UTF-8 the default source encoding,
    so this is rare).
    """
    root = stdlib_root() if root is None else root
    files: list[SourceFile] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if is_excluded(rel.parts):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel_posix = rel.as_posix()
        files.append(SourceFile(rel_posix, split_of(rel_posix), text))
    return files


def by_split(files: list[SourceFile], max_files: int | None = None) -> dict[str, list[SourceFile]]:
    """Group files by split, keeping path order inside each split.

    ``max_files`` (toy runs) keeps at most that many files of each split.
    """
    groups: dict[str, list[SourceFile]] = {name: [] for name in SPLITS}
    for f in files:
        groups[f.split].append(f)
    if max_files is not None:
        groups = {name: group[:max_files] for name, group in groups.items()}
    return groups


def python_version() -> str:
    """Return the running interpreter's version, e.g. '3.12.3', for the model card."""
    return ".".join(str(v) for v in sys.version_info[:3])
