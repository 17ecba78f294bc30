"""rhmfast: fast, exact Random Hierarchy Model data and patchwise layers for PyTorch."""
__version__ = "0.1.0"

from rhmfast._backend import backends, set_cpu_gemm
from rhmfast.data.encoding import one_hot
from rhmfast.data.grammar import RHM
from rhmfast.ops.rhm_sample import philox_uniform
from rhmfast import nn  # registers the patchwise ops' fake kernels and autograd with the dispatcher
from rhmfast.ops import locally_connected as _locally_connected  # noqa: F401  (the hLCN layer's fake kernels)

__all__ = ["RHM", "backends", "nn", "one_hot", "philox_uniform", "set_cpu_gemm", "__version__"]
