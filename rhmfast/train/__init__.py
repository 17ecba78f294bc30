"""Trainers of the RHM learners, each readable top to bottom in its own file.

- ``train_sgd`` (``end_to_end``): the 2024 reference library's recipe for end-to-end training of any model
  on token ids.
- ``train_layerwise_sgd`` (``layerwise``): the reference's layerwise schedule for the hCNN, optionally with
  hierarchical ("hint") supervision of the intermediate layers by the latent-tree symbols of their level.
- ``train_ren_layerwise`` (``ren``): the algorithm of Ren et al. (2026), stage by stage, closed-form ridge.
- ``train_residual_layerwise`` (``residual``): Daniely's (2026) layerwise training of the residual learner of a
  label hierarchy, one block per level; ``train_hierarchy_end_to_end`` (``residual_end_to_end``) its
  end-to-end baselines (the same network on the top labels or on all labels, and a shallow MLP).

They share ``record`` (the ``RunRecord`` every trainer returns) and ``loop`` (checks, evaluation and the SGD
loop over epochs). Fixed seeds (rules: the grammar's; data: ``seed_data``; order of minibatches:
``seed_order``; model: the model's own) make a run repeatable bit for bit on CPU. Ctrl-C
(KeyboardInterrupt) ends training early and returns the partial record with ``interrupted=True``.
"""
from rhmfast.train.end_to_end import train_sgd
from rhmfast.train.layerwise import train_layerwise_sgd
from rhmfast.train.loop import count_errors, test_error
from rhmfast.train.record import RunRecord
from rhmfast.train.replicas import train_sgd_replicas
from rhmfast.train.residual import train_residual_layerwise
from rhmfast.train.residual_end_to_end import train_hierarchy_end_to_end
from rhmfast.train.ren import fit_kernel_ridge, fit_ridge, ren_stage_sizes, train_ren_layerwise

__all__ = ["RunRecord", "count_errors", "fit_kernel_ridge", "fit_ridge", "ren_stage_sizes", "test_error", "train_hierarchy_end_to_end",
           "train_layerwise_sgd",
           "train_ren_layerwise", "train_residual_layerwise", "train_sgd", "train_sgd_replicas"]
