"""Helpers for files that several processes write: data set shards and a sweep's run records."""
from __future__ import annotations

import errno
import os

# Why a write failed, in words, for the errors a full or read-only disk gives (others: their strerror)
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large for the file system"}


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (temporary files are named by their writer's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable_dir(path, flag: str) -> str:
    """path, if it is a folder this process can create files in, or one it can create (its nearest
    existing ancestor is such a folder); otherwise ValueError naming flag. Creates nothing, so a command
    can check its output before any work."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.exists(path):
        raise ValueError(f"{flag} {path} is a broken symbolic link")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ValueError(f"{flag} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: the folder is not writable")
        return path
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"{flag} {path}: cannot create it, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create it, {ancestor} is not writable")
    return path


def write_error_text(error: OSError) -> str:
    """Why a write failed, in words: 'no space left on the device' for ENOSPC (so for pyarrow's errors
    too, which carry the errno), a quota or read-only file system by name, else the error's own text."""
    known = _WRITE_ERRORS.get(getattr(error, "errno", None))
    if known:
        return known
    return error.strerror or str(error)
