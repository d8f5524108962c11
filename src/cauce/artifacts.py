"""Atomic artifact writing and small I/O helpers shared by every component.

A KFP step that fails half-way must not leave an output that a later step (or a
cached re-run) could take for good. Every component therefore writes its
artifact into a hidden sibling directory and renames it into place only after
the whole output is complete. On Vertex the artifact path is a Cloud Storage
FUSE mount: rename there is a copy-then-delete, which is still all-or-nothing
from the point of view of the next step because the step only succeeds after
the rename returns.

A step that is stopped (SIGTERM: Vertex, Kubeflow and kfp.local cancel a step that
way) cleans up too: while an atomic output is being written, SIGTERM raises
:class:`Terminated` in the main thread, so the ``with`` blocks unwind and remove the
partial output before the process exits (status 143, as a SIGTERM death reads in a
shell). What only SIGKILL or a crash can leave behind, a hidden
``.<name>.partial-<host>-<pid>-*`` sibling, is never read by anything and is swept by
the next write of the same output once its writer is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CauceError(ValueError):
    """An error caused by the user's input or data, with a message that says
    which parameter, column or file is wrong and what was expected."""


class Terminated(SystemExit):
    """SIGTERM arrived while an atomic output was being written. A SystemExit (status
    143), so no ``except Exception`` on the way up swallows it, every ``with`` and
    ``finally`` runs, and the process then exits as a stopped step should."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of killing the
    process outright. Only from the main thread (Python delivers signals there), only
    over the default action: a handler someone else installed (Beam's job
    cancellation, a server's shutdown) is theirs and stays; the previous handler is
    restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _partial_prefix(final: Path) -> str:
    # Host and pid name the writer, so a later write can tell a stale partial from a live one.
    return f".{final.name}.partial-{socket.gethostname()}-{os.getpid()}-"


_BOOT_TIME: float | None = None


def _writer_alive(pid: int, created: float) -> bool:
    """Whether process ``pid`` runs and is the one that created a partial at ``created``
    (a pid reused by a process started later is not)."""
    global _BOOT_TIME
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if _BOOT_TIME is None:
            _BOOT_TIME = next(
                float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
            )
    except (OSError, StopIteration):
        return True  # no /proc: a live pid is taken for the writer
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return False
    started = _BOOT_TIME + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= created + 2.0


def sweep_stale_partials(final: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.partial-*`` siblings of ``final`` left by a writer of this host
    that is gone (SIGKILL, a crash); return them. Partials of a live writer, or of
    another host (a shared Cloud Storage mount), are left alone: nothing reads them."""
    final = Path(final)
    pattern = re.compile(rf"\.{re.escape(final.name)}\.partial-(?P<host>.+)-(?P<pid>\d+)-[^-]+")
    host = socket.gethostname()
    removed = []
    if not final.parent.is_dir():
        return removed
    for candidate in final.parent.glob(f".{_glob_escape(final.name)}.partial-*"):
        match = pattern.fullmatch(candidate.name)
        if not match or match["host"] != host:
            continue
        try:
            created = candidate.lstat().st_mtime
        except FileNotFoundError:
            continue
        if _writer_alive(int(match["pid"]), created):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        log.warning("removed %s, a partial output its writer (pid %s) left when it died", candidate, match["pid"])
        removed.append(candidate)
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only on success.

    On any exception, and on SIGTERM (see :func:`sigterm_unwinds`), the temporary
    directory is removed and ``path`` is left exactly as it was (absent, for a fresh
    KFP output). Stale partials of ``path`` that dead writers left are swept first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(final)
    with sigterm_unwinds():
        tmp = Path(tempfile.mkdtemp(prefix=_partial_prefix(final), dir=final.parent))
        try:
            yield tmp
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, Terminated):
                log.warning("stopped by SIGTERM: removed the partial output %s", tmp)
            raise
        _replace_dir(tmp, final)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces ``path`` only when the block succeeds
    (removed on any exception and on SIGTERM, as :func:`atomic_dir`)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_partials(final)
    with sigterm_unwinds():
        fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(final), dir=final.parent)
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
