"""The README's Python examples run as written, and do what their comments say."""
from __future__ import annotations

import os
import re

import pytest
import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.mark.slow
def test_readme_examples_run_as_documented(capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2
    ns: dict = {}
    for block in blocks:
        exec(compile(block, README, "exec"), ns)
    g = ns["g"]
    assert ns["x"].shape == (10, g.input_dim) and ns["x"].dtype == torch.uint8 and ns["y"].dtype == torch.int64
    assert [t.shape[1] for t in ns["tree"]] == [g.s ** level for level in range(g.L + 1)]
    assert ns["x_tr"].shape == (50_000, 8) and ns["x_te"].shape == (10_000, 8)
    assert ns["xb"].shape == (128, 8)
    assert ns["onehot"].shape == (50_000, g.v, 8) and ns["onehot"].dtype == torch.float32
    assert ns["record"].final_test_error < 0.01  # "test error below 1%"
    assert capsys.readouterr().out.strip()  # the example prints its result
