"""The learners, one file per family, all on token ids [B, s^L]: the hierarchical CNN (``hcnn``), the
fully-connected baseline (``fully_connected``), Ren et al.'s layerwise learner (``ren``), the residual
layerwise learner of label hierarchies and its shallow baseline (``residual``, on x of +-1, not token ids), and the
observables that measure what a learner has learned of the hierarchy (``observables``)."""
from rhmfast.models._common import device_of
from rhmfast.models.fully_connected import FullyConnected
from rhmfast.models.hcnn import NORMS, HierarchicalCNN, HierarchicalCNNReplicas
from rhmfast.models.observables import (first_patch_posterior, posterior_distance, resample_below,
                                        synonym_purity, synonymic_sensitivity)
from rhmfast.models.ren import FEATURES, RenLayerwiseLearner
from rhmfast.models.residual import ResidualLayerwiseNet, ShallowMLP

__all__ = ["FEATURES", "NORMS", "FullyConnected", "HierarchicalCNN", "HierarchicalCNNReplicas", "RenLayerwiseLearner", "ResidualLayerwiseNet", "ShallowMLP",
           "device_of", "first_patch_posterior", "posterior_distance", "resample_below", "synonym_purity",
           "synonymic_sensitivity"]
