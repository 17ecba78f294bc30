"""rhmfast: fast, exact Random Hierarchy Model data and patchwise layers for PyTorch."""
__version__ = "0.1.0"

from rhmfast._backend import backends
