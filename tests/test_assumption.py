"""Ren et al.'s Assumption 6 checked exactly (grammar.exact.assumption_check): hand-made grammars with a
known collision and a known never-first patch, a brute-force loop over random grammars, the facts of the
pcsl grammars the studies use, the command `rhmfast assumption`, and `require = "assumption6"` in grids."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import rhmfast
import rhmfast.__main__ as cli
from rhmfast.data.grammar import find_assumption_seed
from rhmfast.studies.grid import expand, sweep_configs
from rhmfast.studies.runs import DEFAULTS, check_feasible, complete_config, config_hash

from conftest import SAMPLERS, random_grammar

KEYS = ["level", "rho", "K_rho", "collisions", "never_first", "kappa"]
# Level-1 rules of the hand-made grammars (v = 3, m = 2, s = 2): every symbol owns two patches.
LEVEL_1 = [[[0, 0], [0, 1]], [[1, 0], [1, 1]], [[2, 0], [2, 1]]]


def hand_grammar(tmp_path, level_0) -> rhmfast.RHM:
    """A grammar with n_classes = 2, v = 3, m = 2, s = 2, L = 2, the given label rules and LEVEL_1, written in
    the pcsl sampler's layout (RHM.load checks the layout and its invariants, not that the seed draws these
    rules)."""
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(dict(format="rhmfast.RHM", version=1, v=3, m=2, s=2, L=2, n_classes=2, seed=0,
                                    rules_sampler="pcsl", parents=[[0, 1], [0, 1, 2]], rules=[level_0, LEVEL_1])))
    return rhmfast.RHM.load(path)


def test_a_collision_of_two_non_synonyms(tmp_path):
    """Symbols 0 and 1 stand first only under label 0: their patches share the posterior e_0."""
    g = hand_grammar(tmp_path, [[[0, 0], [1, 1]], [[2, 0], [2, 1]]])
    one, two = g.exact.assumption_check()
    assert list(two) == KEYS
    assert one == dict(level=1, rho=math.sqrt(2), K_rho=pytest.approx(2), collisions=0, never_first=0, kappa=1.0)
    # First symbol: 0 and 1 with probability 1/4 each, 2 with 1/2: kappa = 1 / (3 * 1/4).
    assert two == dict(level=2, rho=0.0, K_rho=0.0, collisions=1, never_first=0, kappa=pytest.approx(4 / 3))
    assert not g.exact.satisfies_assumption()
    assert g.exact.assumption_summary() == ("Assumption 6 fails: (b) level 2: 1 pair of non-synonyms with "
                                            "identical posteriors (K_rho = 0)")


def test_a_symbol_that_never_stands_first(tmp_path):
    """Symbol 2 is never a first child: its two level-2 patches never stand first, kappa is infinite."""
    g = hand_grammar(tmp_path, [[[0, 0], [0, 1]], [[1, 0], [1, 2]]])
    two = g.exact.assumption_check()[1]
    assert two == dict(level=2, rho=pytest.approx(math.sqrt(2)), K_rho=pytest.approx(2 * math.sqrt(2)),
                       collisions=0, never_first=2, kappa=math.inf)
    assert not g.exact.satisfies_assumption()
    assert g.exact.assumption_summary() == "Assumption 6 fails: (a) level 2: 2 patches never stand first"


def test_a_grammar_that_satisfies_it(tmp_path):
    """First symbols 0 | 1 under label 0 and 1 | 2 under label 1: posteriors e_0, (1/2, 1/2), e_1."""
    g = hand_grammar(tmp_path, [[[0, 0], [1, 1]], [[1, 0], [2, 2]]])
    two = g.exact.assumption_check()[1]
    assert two["rho"] == pytest.approx(math.sqrt(0.5)) and two["K_rho"] == pytest.approx(math.sqrt(2))
    assert two["kappa"] == pytest.approx(4 / 3) and two["collisions"] == two["never_first"] == 0
    assert g.exact.satisfies_assumption()
    assert g.exact.assumption_summary() == "Assumption 6 holds: K_rho >= 1.414 (level 2), kappa <= 1.333"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_assumption_check_equals_a_loop_over_pairs(sampler, rng):
    """Every level's numbers, against a Python loop over parents and pairs of parents."""
    for _ in range(3):
        g = random_grammar(rng, sampler)
        levels = g.exact.assumption_check()
        assert [row["level"] for row in levels] == list(range(1, g.L + 1))
        for row in levels:
            level = row["level"]
            first = g.exact.first_symbol_law(level - 1).sum(0)[g.parents[level - 1]].tolist()
            q = g.exact.label_posterior(level)[:, 0]
            standing = [p for p in range(len(first)) if first[p] > 0]
            distances = [float((q[a] - q[b]).norm()) for i, a in enumerate(standing) for b in standing[i + 1:]]
            rho = min(distances, default=math.inf)
            assert row["rho"] == pytest.approx(rho, abs=1e-12)
            assert row["K_rho"] == pytest.approx(rho * g.m ** (level / 2), abs=1e-12)
            assert row["collisions"] == sum(d < 1e-12 for d in distances)
            assert row["never_first"] == g.m * sum(f == 0 for f in first)
            expected = math.inf if 0 in first else 1 / (len(first) * g.m * min(first) / g.m)
            assert row["kappa"] == pytest.approx(expected, rel=1e-12)
            assert all(type(row[k]) is int for k in ("level", "collisions", "never_first"))
            assert all(type(row[k]) is float for k in ("rho", "K_rho", "kappa"))
        assert g.exact.satisfies_assumption() == all(r["never_first"] == r["collisions"] == 0 for r in levels)


# What the pcsl grammars of v = n_c = 8, s = 2, rules seed 1 measure: {level: (collisions, never_first)}
# of the levels that fail.
PCSL_SEED_1 = {(3, 3): {2: (1, 0), 3: (1, 0)}, (3, 4): {2: (1, 0), 3: (1, 0)}, (2, 4): {4: (0, 2)},
               (2, 5): {4: (0, 2), 5: (1, 0)}, (2, 6): {4: (0, 2), 5: (1, 0)},
               (2, 7): {4: (0, 2), 5: (1, 0), 7: (1, 0)}, (4, 4): {}}


@pytest.mark.parametrize("m, L", sorted(PCSL_SEED_1))
def test_pcsl_seed_1_facts(m, L):
    g = rhmfast.RHM(8, m, 2, L, seed=1)
    failing = {r["level"]: (r["collisions"], r["never_first"]) for r in g.exact.assumption_check()
               if r["collisions"] or r["never_first"]}
    assert failing == PCSL_SEED_1[m, L]
    assert g.exact.satisfies_assumption() == (not failing)


@pytest.mark.parametrize("m, L", [(2, 4), (3, 4), (4, 4), (3, 5)])
def test_first_token_uniform_has_kappa_one(m, L):
    """Every P_k is doubly stochastic, so the first symbol is uniform at every level: kappa = 1 (up to
    float64 rounding of the products of 1/m)."""
    g = rhmfast.RHM(8, m, 2, L, seed=1, rules="first-token-uniform")
    for row in g.exact.assumption_check():
        assert row["kappa"] == pytest.approx(1.0, rel=1e-12) and row["never_first"] == 0


def test_find_assumption_seed_is_the_first_satisfying_seed():
    brute = next(seed for seed in range(1, 1000) if rhmfast.RHM(8, 2, 2, 4, seed=seed).exact.satisfies_assumption())
    assert find_assumption_seed(8, 2, 2, 4, start=1) == brute == 64
    assert find_assumption_seed(8, 2, 2, 4, start=brute) == brute
    assert find_assumption_seed(8, 2, 2, 4, start=1, max_seeds=brute - 1) is None
    with pytest.raises(ValueError, match="max_seeds must be >= 1"):
        find_assumption_seed(8, 2, 2, 4, max_seeds=0)


# ---- the command line ---------------------------------------------------------------------------

GRAMMAR = ["--v", "8", "--s", "2", "--seed_rules", "1"]


def test_cli_table_summary_and_exit_status(capsys):
    cli.main(["assumption", *GRAMMAR, "--m", "4", "--L", "4"])  # holds: returns, exit status 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == KEYS and [line.split()[0] for line in out[2:6]] == ["1", "2", "3", "4"]
    assert out[-1] == rhmfast.RHM(8, 4, 2, 4, seed=1).exact.assumption_summary()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["assumption", *GRAMMAR, "--m", "2", "--L", "4"])
    assert exit_.value.code == 1
    assert capsys.readouterr().out.splitlines()[-1] == "Assumption 6 fails: (a) level 4: 2 patches never stand first"


def test_cli_json_writes_infinity_as_null(capsys):
    with pytest.raises(SystemExit):
        cli.main(["assumption", *GRAMMAR, "--m", "2", "--L", "4", "--json"])
    levels = json.loads(capsys.readouterr().out)
    assert [list(row) for row in levels] == [KEYS] * 4
    assert levels[3]["kappa"] is None and levels[3]["never_first"] == 2


def test_cli_find(capsys):
    cli.main(["assumption", *GRAMMAR, "--m", "2", "--L", "4", "--find"])
    out = capsys.readouterr().out
    assert "--seed_rules 64" in out and "seed=64" in out and out.splitlines()[-1].startswith("Assumption 6 holds")
    with pytest.raises(SystemExit, match=r"no rules seed in \[1, 11\).*--max_seeds"):
        cli.main(["assumption", *GRAMMAR, "--m", "2", "--L", "4", "--find", "--max_seeds", "10"])
    with pytest.raises(SystemExit, match="--max_seeds must be >= 1"):
        cli.main(["assumption", *GRAMMAR, "--m", "2", "--L", "4", "--find", "--max_seeds", "0"])


# ---- require = "assumption6" in grids -----------------------------------------------------------

def test_grid_takes_the_first_satisfying_seed_once_per_grammar(monkeypatch):
    import rhmfast.studies.grid as grid

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return find_assumption_seed(*args, **kwargs)

    monkeypatch.setattr(grid, "find_assumption_seed", counting)
    axes = dict(v=8, settings="2,4 3,3 4,4", P="100,200", seeds="0,1", seed_rules=1, require="assumption6",
                n_test=64)
    configs = expand(axes)
    assert len(calls) == 3  # one search per grammar, not per run
    found = {(c["m"], c["L"]): c["seed_rules"] for c in configs}
    for (m, L), seed in found.items():
        brute = next(s for s in range(1, 1000) if rhmfast.RHM(8, m, 2, L, seed=s).exact.satisfies_assumption())
        assert seed == brute
    assert found == {(2, 4): 64, (3, 3): 2, (4, 4): 1}
    assert all(c["require"] == "assumption6" for c in configs) and len(configs) == 3 * 2 * 2
    assert [config_hash(c) for c in expand(axes)] == [config_hash(c) for c in configs]  # deterministic


def test_require_from_flags_and_toml(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text('v = 8\nn_test = 64\nrequire = "assumption6"\nseed_rules = 1\nP = [100]\n'
                    '[[grid]]\nsettings = [[2, 4], [3, 3]]\n')
    assert [c["seed_rules"] for c in sweep_configs({}, str(path))] == [64, 2]
    cli.main(["sweep", "--v", "8", "--settings", "2,4 3,3", "--P", "100", "--n_test", "64", "--seed_rules", "1",
              "--require", "assumption6", "--dry-run", "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert "m=2 s=2 L=4 seed_rules=64" in out and "m=3 s=2 L=3 seed_rules=2" in out


def test_require_refuses_what_it_cannot_meet():
    with pytest.raises(ValueError, match=r"require must be one of \(None, 'assumption6'\)"):
        complete_config(dict(P=10, require="assumption5"))
    # A stored config whose seed does not meet its require is refused, so its hash cannot lie.
    with pytest.raises(ValueError, match="seed_rules = 1 does not meet require = 'assumption6'.*level 2"):
        check_feasible(dict(P=10, v=8, m=3, L=3, seed_rules=1, require="assumption6", n_test=64))
    check_feasible(dict(P=10, v=8, m=3, L=3, seed_rules=2, require="assumption6", n_test=64))
    with pytest.raises(ValueError, match=r"require = 'assumption6': no seed_rules in \[1, 1001\)"):
        expand(dict(v=8, m=2, L=8, P=10, n_test=64, seed_rules=1, require="assumption6"))


def test_require_at_none_leaves_run_names_unchanged():
    """Runs stored before the key existed keep their names: require = None stays out of the hash, and
    every run of the committed sweep table still hashes to its stored name."""
    pq = pytest.importorskip("pyarrow.parquet")
    assert config_hash(dict(P=10)) == config_hash(dict(P=10, require=None))
    table = Path(__file__).parents[1] / "benchmarks" / "results" / "sweep_pstar" / "results.parquet"
    rows = pq.read_table(table).to_pylist()
    assert rows and all(config_hash({k: row[k] for k in DEFAULTS if k in row}) == row["hash"] for row in rows)
    assert config_hash(dict(P=10, seed_rules=2, m=3)) != config_hash(dict(P=10, seed_rules=2, m=3,
                                                                          require="assumption6"))
