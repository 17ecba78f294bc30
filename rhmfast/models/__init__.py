"""The learners of the RHM (split into one file per family next)."""
from rhmfast.models.hcnn import (FEATURES, NORMS, FullyConnected, HierarchicalCNN, RenLayerwiseLearner, check_choice,
                                 check_positive_int, device_of)

__all__ = ["FEATURES", "NORMS", "FullyConnected", "HierarchicalCNN", "RenLayerwiseLearner", "check_choice",
           "check_positive_int", "device_of"]
