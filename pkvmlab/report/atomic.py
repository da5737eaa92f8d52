"""Write a report so that readers see the old file or the whole new one, never a part.

A dashboard may poll ``reports/`` while a run writes, and a run may be killed
mid-write: the data goes to a temporary file in the same directory (so the
rename cannot cross file systems), is fsynced, then ``os.replace``d over the
target.  The directory is fsynced too so the rename itself survives a crash.
"""

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data):
    """Replace ``path`` with ``data`` atomically; on any error the old file is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text, encoding="utf-8"):
    """``atomic_write_bytes`` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass   # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
