"""Diagnostics: resampling below a level keeps the levels above, synonymic sensitivity of oracle
representations, the exact first-patch posteriors, and the Ren learner's posterior distance."""
import pytest
import torch
import torch.nn.functional as F

import rhmfast
from conftest import parse_back
from rhmfast.models import HierarchicalCNN, RenLayerwiseLearner
from rhmfast.models import first_patch_posterior, posterior_distance, resample_below, synonymic_sensitivity


def test_resample_below_keeps_the_levels_above_and_redraws_the_rest():
    g = rhmfast.RHM(6, 3, 2, 4, seed=2)
    x, _, tree = g.sample(500, seed=0, return_tree=True)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(resample_below(g, tree[g.L], g.L, gen), x.long())
    for level in range(g.L):
        x_l = resample_below(g, tree[level], level, gen)
        levels, _ = parse_back(g, x_l)
        for k in range(level + 1):
            assert torch.equal(levels[k], tree[k].long()), (level, k)  # parses back to the same upper tree
        assert (levels[level + 1] != tree[level + 1].long()).any()  # the level below was redrawn
        # each child is drawn uniformly among the m rules: about 1/m of the level-(l+1) patches are kept
        same = (levels[level + 1] == tree[level + 1].long()).reshape(500, -1, g.s).all(-1).float().mean().item()
        assert abs(same - 1 / g.m) < 0.06, (level, same)


class Oracle(torch.nn.Module):
    """Layer k's representation = one-hot of the parsed symbols of generative level L - k."""

    def __init__(self, g):
        super().__init__()
        self.g = g

    def layer_outputs(self, tokens):
        levels, _ = parse_back(self.g, tokens)
        return [F.one_hot(levels[self.g.L - k], self.g.v).double() for k in range(1, self.g.L + 1)]


def test_synonymic_sensitivity_of_an_oracle():
    g = rhmfast.RHM(8, 3, 2, 3, seed=1)
    S = synonymic_sensitivity(Oracle(g), g, n=2000, seed=0)
    assert S.shape == (3, 3)
    for k in range(1, 4):
        for level in range(3):
            if g.L - k <= level:  # layer k sees only symbols that were kept
                assert S[k - 1, level] == 0, (k, level)
            else:
                assert S[k - 1, level] > 0.3, (k, level, S)


def test_first_patch_posterior_is_the_label_at_level_one_and_matches_frequencies():
    g = rhmfast.RHM(6, 2, 2, 3, seed=0)
    x, y, tree = g.sample(20000, seed=3, return_tree=True)
    torch.testing.assert_close(first_patch_posterior(g, tree, 1), F.one_hot(y, 6).double())
    q = first_patch_posterior(g, tree, 2)
    parent = tree[1][:, 0].long()
    for symbol in parent.unique()[:4]:
        rows = parent == symbol
        empirical = torch.bincount(y[rows], minlength=6).double() / rows.sum()
        torch.testing.assert_close(q[rows][0], empirical, atol=0.04, rtol=0)
        assert (q[rows] == q[rows][0]).all()  # synonyms share it


def test_posterior_distance_of_an_untrained_and_a_planted_learner():
    g = rhmfast.RHM(6, 2, 2, 2, seed=0)
    learner = RenLayerwiseLearner(6, 2, 2)  # W = 0: outputs are 0, the distance is the mean norm of q
    x, _, tree = g.sample(1000, seed=7, return_tree=True)
    expected = first_patch_posterior(g, tree, 2).norm(dim=1).mean().item()
    assert abs(posterior_distance(learner, g, 2, n=1000, seed=7) - expected) < 1e-12
    # Plant W^(2) = the exact map from a level-2 patch (tensor feature = its one-hot) to q^(2).
    q = g.exact.label_posterior(2).nan_to_num(0.0)  # [n_parents, m, n_c] aligned with rules[1]
    with torch.no_grad():
        for row, rules in enumerate(g.rules[1]):
            for j, (a, b) in enumerate(rules.tolist()):
                learner.W[1][:, a * 6 + b] = q[row, j]
    assert posterior_distance(learner, g, 2, n=1000, seed=7) < 1e-12


@pytest.mark.cuda
def test_diagnostics_follow_the_model_to_cuda():
    """Samples are drawn where the model lives; the redraws (a CPU generator) and the posteriors match the CPU's."""
    g = rhmfast.RHM(6, 2, 2, 3, seed=0)
    x, _, tree = g.sample(500, seed=3, return_tree=True)
    gen_cpu, gen_gpu = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    redrawn = resample_below(g, tree[1].cuda(), 1, gen_gpu)
    assert redrawn.is_cuda and torch.equal(redrawn.cpu(), resample_below(g, tree[1], 1, gen_cpu))
    q = first_patch_posterior(g, [t.cuda() for t in tree], 2)
    assert q.is_cuda and torch.equal(q.cpu(), first_patch_posterior(g, tree, 2))
    learner = RenLayerwiseLearner(6, 2, 3)  # W = 0: the distance is the mean norm of q
    expected = posterior_distance(learner, g, 2, n=1000, seed=7)
    assert posterior_distance(learner.cuda(), g, 2, n=1000, seed=7) == pytest.approx(expected, rel=1e-12)
    model = HierarchicalCNN(6, 16, 2, 3, 6, seed=0)
    S = synonymic_sensitivity(model, g, n=300, seed=4)
    torch.testing.assert_close(synonymic_sensitivity(model.cuda(), g, n=300, seed=4).cpu(), S, rtol=1e-3, atol=1e-5)
