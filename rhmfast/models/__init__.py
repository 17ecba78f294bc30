"""The learners, one file per family, all on token ids [B, s^L]: the hierarchical CNN (``hcnn``), its
untied-weights twin, the hierarchical LCN (``locally_connected``), the
fully-connected baseline (``fully_connected``), Ren et al.'s layerwise learner (``ren``), the residual
layerwise learner of label hierarchies and its shallow baseline (``residual``, on x of +-1, not token ids), and the
observables that measure what a learner has learned of the hierarchy (``observables``). The
transformers of the literature (``transformer``: attention-only, pre-LayerNorm encoder) take token ids [B, d]."""
from rhmfast.models._common import device_of
from rhmfast.models.fully_connected import FullyConnected
from rhmfast.models.hcnn import NORMS, HierarchicalCNN, HierarchicalCNNReplicas
from rhmfast.models.locally_connected import LocallyConnected
from rhmfast.models.observables import (first_patch_posterior, noise_sensitivity, posterior_distance,
                                        replace_and_expand, resample_below, synonym_purity, synonymic_sensitivity)
from rhmfast.models.ren import FEATURES, RenLayerwiseLearner
from rhmfast.models.residual import ResidualLayerwiseNet, ShallowMLP
from rhmfast.models.transformer import AttentionOnly, Encoder

__all__ = ["FEATURES", "NORMS", "AttentionOnly", "Encoder", "FullyConnected", "HierarchicalCNN", "HierarchicalCNNReplicas",
           "LocallyConnected", "RenLayerwiseLearner", "ResidualLayerwiseNet", "ShallowMLP", "device_of", "first_patch_posterior",
           "noise_sensitivity", "posterior_distance", "replace_and_expand", "resample_below", "synonym_purity",
           "synonymic_sensitivity"]
