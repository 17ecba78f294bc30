"""Sample-complexity studies: runs, grids, the result store, engines, the sweep, distributed training, the
P* analysis and the demo."""
