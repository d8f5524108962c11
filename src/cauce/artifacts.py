"""Atomic artifact writing and small I/O helpers shared by every component.

A KFP step that fails half-way must not leave an output that a later step (or a
cached re-run) could take for good. Every component therefore writes its
artifact into a hidden sibling directory and renames it into place only after
the whole output is complete. On Vertex the artifact path is a Cloud Storage
FUSE mount: rename there is a copy-then-delete, which is still all-or-nothing
from the point of view of the next step because the step only succeeds after
the rename returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CauceError(ValueError):
    """An error caused by the user's input or data, with a message that says
    which parameter, column or file is wrong and what was expected."""


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only on success.

    On any exception the temporary directory is removed and ``path`` is left
    exactly as it was (absent, for a fresh KFP output).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces ``path`` only when the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.partial-", dir=final.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.replace(tmp, final)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as handle:
        return json.load(handle)


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it exists, else raise an error naming what was expected."""
    p = Path(path)
    if not p.exists():
        raise CauceError(f"{what} not found at {p}: expected the output of the upstream step")
    return p
