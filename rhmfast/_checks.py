"""Argument checks shared by every layer of the package: each names the parameter and what it allows."""
from __future__ import annotations


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"rhmfast: {name} must be an int >= 1, got {value!r}")
    return value


def check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"rhmfast: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value
