"""Sample-complexity studies, from one run's config to the report of a sweep.

- ``runs``: a run's config (defaults, checks, hash) and how to run it; ``grid``: grids of configs from
  flags and TOML files; ``store``: the result store (one atomic JSON record per run, Parquet compaction);
  ``engines``: where runs execute (a local process pool, Ray); ``sweep``: runs a grid into a store,
  resumably; ``distributed``: one large run, data-parallel under torchrun.
- ``curves``: rows of finished runs as error curves per setting; ``pstar``: P*(ε), its bootstrap interval
  and the scaling fit; ``plots``: the figures; ``report``: the tables and figures of a sweep in one folder.
- ``demo``: ``rhmfast demo``, a small sweep and its report.
"""
from rhmfast.studies.curves import threshold
from rhmfast.studies.distributed import train_sgd_distributed
from rhmfast.studies.grid import expand, parse_values, sweep_configs
from rhmfast.studies.plots import plot_collapse, plot_curves, plot_error_vs_p, plot_pstar_scaling
from rhmfast.studies.pstar import crossing, estimate_pstar, fit_scaling, pstar_table
from rhmfast.studies.report import write_report, write_tables
from rhmfast.studies.runs import complete_config, config_hash, run_config
from rhmfast.studies.store import ResultStore, collect, load_rows
from rhmfast.studies.sweep import run_sweep

__all__ = ["ResultStore", "collect", "complete_config", "config_hash", "crossing", "estimate_pstar", "expand",
           "fit_scaling", "load_rows", "parse_values", "plot_collapse", "plot_curves", "plot_error_vs_p",
           "plot_pstar_scaling", "pstar_table", "run_config", "run_sweep", "sweep_configs", "threshold",
           "train_sgd_distributed", "write_report", "write_tables"]
