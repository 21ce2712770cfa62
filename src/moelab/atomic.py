"""One atomic file write: a reader sees the old file or the new one, never a torn or empty one.

The new content goes to a temporary file with a unique name in the destination's directory (so two
writers never share one), is flushed and fsynced, renamed over the destination with
:func:`os.replace` (atomic on POSIX and Windows within one file system), and the directory is
fsynced so the rename itself survives a power cut. A failed write removes its temporary file and
leaves the destination as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_paths", "atomic_write"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` to write into; on a clean exit it is fsynced and
    renamed over ``path`` (then the directory is fsynced), on an exception it is removed.

    For writers that take a file name (``safetensors.torch.save_file``); :func:`atomic_write`
    covers bytes and text. The temporary file is created empty (mode 0o666 less the umask, like
    ``open``) before it is yielded, so no other writer can claim the same name.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """:func:`atomic_path` for files that belong together (a checkpoint's weights and config):
    every file is written and fsynced before the first rename, then they are renamed in the given
    order, so a failure while writing leaves every destination as it was."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            temps.append(tmp)
        yield tuple(temps)
        for tmp in temps:
            _fsync_file(tmp)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(target.parent for target in targets):
        _fsync_directory(directory)


def atomic_write(path: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text encoded with ``encoding``, newlines as given) to ``path``
    atomically; returns ``path``. A TypeError names any other type of ``data``."""
    if isinstance(data, str):
        data = data.encode(encoding)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
