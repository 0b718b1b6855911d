"""Writing files so that a reader sees the old file or the whole new one, never a part; file digests.

Every file ncbench writes (checkpoints, cards, result files, leaderboards, caches, reports) goes through
:func:`atomic_write` (a temporary file in the same folder, fsync, ``os.replace``) or, for a folder filled
in several steps, :func:`atomic_folder`. ``tempfile`` creates its files 0600 and folders 0700; both are
given the permissions a plain ``open`` / ``mkdir`` would (0666 / 0777 less the umask) before the rename, so
outputs honour the umask like any other file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``); elsewhere
    set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part; the
    new file has mode ``0o666 & ~umask``, like one made by ``open``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # e.g. a full disk: say which file was being written
            raise OSError(e.errno, f"cannot write {str(path)!r}: {e.strerror or e}") from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8), creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), text.encode())


def write_json(path: Path, obj: Any) -> None:
    """:func:`atomic_write` of ``obj`` as indented JSON with sorted keys."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Fill a temporary folder next to ``target`` in the block, then rename it to ``target``. If the block
    raises, the temporary folder is removed; if ``target`` appeared meanwhile (another process finished
    first), it is kept and the temporary folder removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """sha256 (hex) of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
