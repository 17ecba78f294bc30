"""Trainers of the RHM learners (split into one file per trainer next)."""
from rhmfast.train.loop import (RunRecord, count_errors, fit_ridge, ren_stage_sizes, test_error, train_layerwise_sgd,
                                train_ren_layerwise, train_sgd)

__all__ = ["RunRecord", "count_errors", "fit_ridge", "ren_stage_sizes", "test_error", "train_layerwise_sgd",
           "train_ren_layerwise", "train_sgd"]
