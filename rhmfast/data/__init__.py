"""The data side: RHM grammars and their rule laws, sampling and decoding, exact statistics, input
encodings, and data sets on disk. Depends on ``rhmfast.ops`` (the sampling kernels) and nothing above."""
from rhmfast.data.dataset import Dataset, open_dataset, write_dataset
from rhmfast.data.encoding import one_hot
from rhmfast.data.exact import ExactStatistics
from rhmfast.data.grammar import RHM, find_assumption_seed, shard_range

__all__ = ["Dataset", "ExactStatistics", "RHM", "find_assumption_seed", "one_hot", "open_dataset", "shard_range",
           "write_dataset"]
