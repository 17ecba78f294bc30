"""Helpers for files that several processes write: data set shards and a sweep's run records."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (temporary files are named by their writer's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
