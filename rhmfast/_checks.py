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


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """An int in [low, high] (high None: unbounded): a non-int is a TypeError, one out of range a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"rhmfast: {name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"rhmfast: {name} must be {bound}, got {value}")
    return value
