"""The data side: RHM grammars and their rule laws, sampling and decoding, exact statistics, input
encodings, data sets on disk, tasks besides classification (last-token prediction), and Daniely's label
hierarchies. Depends on ``rhmfast.ops`` (the sampling kernels) and nothing above."""
from rhmfast.data.dataset import Dataset, open_dataset, write_dataset
from rhmfast.data.encoding import one_hot
from rhmfast.data.exact import ExactStatistics
from rhmfast.data.grammar import RHM, find_assumption_seed, shard_range
from rhmfast.data.hierarchy import CircuitTeacher, LabelHierarchy
from rhmfast.data.rhm_labels import RHMLabels
from rhmfast.data.tasks import TASKS, LastToken, make_task

__all__ = ["CircuitTeacher", "Dataset", "ExactStatistics", "LabelHierarchy", "LastToken", "RHM", "RHMLabels", "TASKS",
           "find_assumption_seed", "make_task", "one_hot", "open_dataset", "shard_range", "write_dataset"]
