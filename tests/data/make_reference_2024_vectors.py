"""Writes tests/data/reference_2024.pt: outputs of the 2024 pcsl-epfl random-hierarchy-model library (its
commit ca0c5aa), so the tests compare rhmfast with it without its source at hand. Run where a git mirror of
the library exists:

    python tests/data/make_reference_2024_vectors.py /path/to/random-hierarchy-model/.git

Contents: "split": the library's RandomHierarchyModel train+test tokens (uint8, its "long" format minus
one) and labels, without and with replacement; "hcnn" / "fcn": its models' state dicts (float64), token
inputs and outputs, the fcn built right after torch.manual_seed(12) (its init.py's seeding).
"""
from __future__ import annotations

import importlib
import os
import random
import subprocess
import sys
import tempfile
import types

import torch
import torch.nn.functional as F

# (v, n_classes, m, s, L, rules seed, sample seed, P, P_test): the first three of tests/test_split_pcsl.py
SPLITS = [(8, 8, 2, 2, 3, 0, 1, 100, 50), (16, 4, 4, 2, 4, 1, 2, 1000, 300), (5, 3, 3, 3, 2, 2, 5, 40, 20)]
HCNN = [(2, 3, False, "mf"), (3, 2, True, "std"), (2, 1, True, "mf")]  # (s, L, bias, norm)
FCN = [(0, False), (1, True), (3, False)]  # (depth, bias)


def source(repo: str, path: str) -> str:
    return subprocess.run(["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


def module(repo: str, path: str) -> types.ModuleType:
    mod = types.ModuleType(path.replace("/", "_"))
    exec(compile(source(repo, path), path, "exec"), mod.__dict__)
    return mod


def onehot(tokens: torch.Tensor, v: int) -> torch.Tensor:
    return F.one_hot(tokens, v).transpose(1, 2).double()  # [B, v, T], the library's "onehot" input


def main(repo: str) -> None:
    out = {"commit": subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    check=True).stdout.strip(), "split": [], "hcnn": [], "fcn": []}
    with tempfile.TemporaryDirectory() as folder:
        package = os.path.join(folder, "library_datasets")
        os.mkdir(package)
        for name in ("__init__", "random_hierarchy_model", "utils"):
            with open(os.path.join(package, f"{name}.py"), "w") as f:
                f.write(source(repo, f"datasets/{name}.py"))
        sys.path.insert(0, folder)
        datasets = importlib.import_module("library_datasets")
        for case in SPLITS:
            v, n, m, s, L, seed_rules, seed_sample, P, P_test = case
            for replacement in (False, True):
                d = datasets.RandomHierarchyModel(num_features=v, num_classes=n, num_synonyms=m, tuple_size=s,
                                                  num_layers=L, seed_rules=seed_rules, seed_sample=seed_sample,
                                                  train_size=P, test_size=P_test, input_format="long",
                                                  replacement=replacement)
                out["split"].append(dict(case=case, replacement=replacement,
                                         tokens=(d.features - 1).to(torch.uint8), labels=d.labels.clone()))
    cnn, fcn = module(repo, "models/cnn.py"), module(repo, "models/fcn.py")
    for s, L, bias, norm in HCNN:
        torch.manual_seed(11)
        ref = cnn.hCNN(s**L, s, 6, 10, 5, L, bias=bias, norm=norm).double()
        tokens = torch.randint(0, 6, (9, s**L))
        with torch.no_grad():
            out["hcnn"].append(dict(case=(s, L, bias, norm), state=ref.state_dict(), tokens=tokens,
                                    logits=ref(onehot(tokens, 6))))
    v, d, width = 4, 9, 16
    for depth, bias in FCN:
        torch.manual_seed(12)
        ref = fcn.Perceptron(d * v, 3, norm=d**0.5) if depth == 0 else fcn.MLP(d * v, width, 3, depth, bias=bias,
                                                                                 norm="mf")
        tokens = torch.randint(0, v, (7, d))
        with torch.no_grad():
            x = onehot(tokens, v).float().transpose(1, 2).flatten(start_dim=1)
            out["fcn"].append(dict(case=(depth, bias), state=ref.state_dict(), tokens=tokens, logits=ref(x)))
    random.seed()  # the library seeded the global stream
    torch.save(out, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_2024.pt"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/pcsl-epfl+random-hierarchy-model/repo")
