"""Crash-safe file and directory writes.

A reader (a resuming trainer, the web app, a person with ``cat``) must never see a half-written
file or checkpoint. Every write here goes to a temporary sibling in the same directory (so the
final step is a rename on one filesystem), is flushed and fsync'ed, and is then moved into place
with ``os.replace``, which is atomic on POSIX and Windows. The parent directory is fsync'ed
afterwards so the rename itself survives a power cut.

Temporary names start with ``.tmp-`` and carry the writer's process id (``.tmp-<name>-<pid>`` for a
directory, ``.tmp-<name>-<pid>.<random>`` for a file), so that scanners (``RunDir.latest_checkpoint``)
ignore leftovers from a crash and ``clear_temporaries`` can remove those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
# The writer's pid in a temporary name: ".tmp-<name>-<pid>", "-<pid>-old" or "-<pid>.<random>".
_TMP_PID = re.compile(r"-(\d+)(?:-old|\.[A-Za-z0-9_]+)?$")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames, new files) to disk.

    A no-op where directories cannot be opened for reading (Windows) or where the filesystem
    refuses ``fsync`` on a directory.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, replace.

    Creates missing parent directories. Returns the final path. On any error the temporary file
    is removed and the previous content of ``path`` (if any) is left untouched; the error
    (``OSError``) propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}-{os.getpid()}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see ``atomic_write_bytes``). Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, trailing newline) to ``path`` atomically.

    Raises ``TypeError`` (before touching the file) if ``obj`` is not JSON-serialisable.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file or directory tree, ignoring one that is already gone."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``final`` only on success.

    Yields ``<parent>/.tmp-<name>-<pid>`` (created empty; a stale one from an earlier crash of a
    process with the same pid is cleared first). When the body returns, the temp directory is
    fsync'ed and renamed to ``final``. If ``final`` already exists it is replaced safely: the old
    directory is renamed aside to ``.tmp-<name>-<pid>-old``, the new one renamed in, and only then
    is the old one deleted, so at every instant either the old or the new complete directory is
    at ``final`` (or, for the instant between the two renames, at the aside name).

    If the body raises, the temp directory is removed, ``final`` is left as it was, and the
    exception propagates.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    remove_path(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    for child in tmp.rglob("*"):  # writers (torch.save, safetensors) do not fsync themselves
        if child.is_symlink():
            continue
        if child.is_dir():
            fsync_dir(child)
        elif child.is_file():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(tmp)
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}-old"
        remove_path(old)
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:  # put the previous version back
            os.replace(old, final)
        remove_path(tmp)
        raise
    fsync_dir(final.parent)
    if old is not None:
        remove_path(old)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (conservatively True when it cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        pass
    return True


def clear_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Clean up after writers that crashed in ``folder``: of the ``.tmp-*`` entries directly in it
    whose pid (see the module docstring) is neither this process nor a live one, or whose name
    carries no pid (written before names had one), a previous version set aside by ``atomic_dir``
    (``.tmp-<name>-<pid>-old``) goes back to ``<name>`` when the crash came between its two renames
    (``<name>`` missing); everything else is removed. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(f"{TMP_PREFIX}*")):
        m = _TMP_PID.search(p.name)
        pid = int(m.group(1)) if m else None
        if pid is not None and (pid == os.getpid() or pid_alive(pid)):
            continue
        final = folder / p.name[len(TMP_PREFIX):m.start()] if m and p.name.endswith("-old") else None
        if final is not None and not (final.exists() or final.is_symlink()):
            os.replace(p, final)  # the complete previous version: the new one never made it
            fsync_dir(folder)
        else:
            remove_path(p)
            removed.append(p)
    return removed
