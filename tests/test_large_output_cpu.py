"""Large CPU outputs (csrc/large_output_cpu.cpp): outputs of 4 MiB or more live in 2 MiB-aligned
mappings that are reused once freed. They must hold exactly what small outputs hold, whatever an earlier
output left in the reused memory, and behave as ordinary tensors."""
from __future__ import annotations

import io
import sys

import pytest
import torch
import torch.nn.functional as F

import rhmfast
from patchconv_samples import conv1d_reference, conv_sample, need_extension, token_sample
from rhmfast.ops.patch_conv import patch_conv
from rhmfast.ops.token_patch_embed import token_patch_embed

MIB = 1 << 20
op_sample = torch.ops.rhmfast.rhm_sample


def sample_in_pieces(table, n_classes, n, seed, piece, dtype=torch.uint8):
    """The same samples drawn in calls small enough for the ordinary allocator."""
    parts = [op_sample(table, n_classes, min(piece, n - i), seed, i, "iid", dtype, True) for i in range(0, n, piece)]
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
            [torch.cat([p[2][l] for p in parts]) for l in range(len(parts[0][2]))])


@pytest.fixture(scope="module")
def grammar():
    need_extension()
    return rhmfast.RHM(16, 4, 2, 6, seed=5)  # 64 tokens a sample


def test_large_samples_equal_small_calls_through_reused_memory(grammar):
    """Each call's tokens (>= 4 MiB), labels and tree are whole: the second and third calls run in
    memory the first one freed, filled with other samples."""
    table, n = grammar.table(), (5 * MIB) // 64 + 3  # an odd count: the mapping is longer than the tensor
    for seed in (1, 2, 3):
        big = op_sample(table, grammar.n_classes, n, seed, 0, "iid", torch.uint8, True)
        assert big[0].nbytes >= 4 * MIB
        small = sample_in_pieces(table, grammar.n_classes, n, seed, piece=4096)
        assert torch.equal(big[0], small[0]) and torch.equal(big[1], small[1])
        assert all(torch.equal(a, b) for a, b in zip(big[2], small[2]))
        del big


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the huge-page mappings are Linux only")
def test_freed_output_memory_is_reused_and_aligned(grammar):
    """The mapping freed last is the one reused, whatever other mappings of that size are cached."""
    table, n = grammar.table(), (6 * MIB) // 64
    others = [op_sample(table, grammar.n_classes, n, 6, 0, "iid", torch.uint8, False)[0] for _ in range(3)]
    del others  # three mappings of the same size in the cache, freed before the one below
    first = op_sample(table, grammar.n_classes, n, 7, 0, "iid", torch.uint8, False)[0]
    address = first.data_ptr()
    assert address % (2 * MIB) == 0
    del first
    again = op_sample(table, grammar.n_classes, n, 8, 0, "iid", torch.uint8, False)[0]
    assert again.data_ptr() == address
    assert torch.equal(again, sample_in_pieces(table, grammar.n_classes, n, 8, piece=8192)[0])


def test_many_sizes_evict_and_stay_correct(grammar):
    """More distinct sizes than the cache keeps (16), each freed and asked for again."""
    table = grammar.table()
    sizes = [(4 * MIB + k * 2 * MIB + 1) // 64 + 1 for k in range(20)]
    for rounds in range(2):
        for i, n in enumerate(sizes):
            tokens = op_sample(table, grammar.n_classes, n, 100 + i, 0, "iid", torch.uint8, False)[0]
            tail = op_sample(table, grammar.n_classes, 5, 100 + i, n - 5, "iid", torch.uint8, False)[0]
            assert torch.equal(tokens[-5:], tail)
            head = op_sample(table, grammar.n_classes, 5, 100 + i, 0, "iid", torch.uint8, False)[0]
            assert torch.equal(tokens[:5], head)


def test_large_outputs_behave_as_ordinary_tensors(grammar):
    tokens = op_sample(grammar.table(), grammar.n_classes, (4 * MIB) // 64 + 1, 3, 0, "iid", torch.uint8, False)[0]
    copy = tokens.clone()
    buffer = io.BytesIO()
    torch.save(tokens, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), copy)
    flat = tokens.view(-1)
    n = flat.numel()
    flat.resize_(n + 3 * MIB)  # storage grows through the same allocator and keeps its contents
    assert torch.equal(flat[:n], copy.view(-1))
    flat[n:] = 9
    assert int(flat[n:].sum()) == 9 * 3 * MIB


def test_patch_conv_large_forward_and_backward():
    """y, d and grad_x of 4 MiB or more, two steps in a row (the second in reused memory)."""
    need_extension()
    for seed in (0, 1):
        x, w, b, pb = conv_sample(256, 32, 64, 128, 3, torch.float32, seed=seed, requires_grad=True)
        y = patch_conv(x, w, b, pb, patch_size=3, scale=0.5, activation="relu")
        assert y.nbytes >= 4 * MIB and x.nbytes >= 4 * MIB
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        grads = torch.autograd.grad(y, (x, w, b, pb), grad_out)
        doubles = [t.detach().double().requires_grad_() for t in (x, w, b, pb)]
        expected = conv1d_reference(*doubles, 3, 0.5, "relu")
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, torch.autograd.grad(expected, doubles, grad_out.double())):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the huge-page mappings are Linux only")
def test_patch_conv_backward_ignores_what_reused_memory_held():
    """grad_x is written by a GEMM with beta = 0 into a reused mapping: NaN left there by an earlier
    output must not leak into it (a GEMM that scaled the old contents by 0 would give NaN)."""
    need_extension()
    x, w, b, pb = conv_sample(256, 16, 128, 64, 3, torch.float32, seed=4, requires_grad=True)
    assert x.nbytes == 6 * MIB
    # Outputs of grad_x's size, more than the cache holds (16), so that every cached mapping of that size
    # is among them: filled with NaN and freed.
    sample = token_sample(256, 48, 8, 128, 1, torch.uint8, torch.float32, seed=4)
    spoiled = [token_patch_embed(*sample, patch_size=1).fill_(float("nan")) for _ in range(17)]
    assert spoiled[0].nbytes == x.nbytes
    addresses = {t.data_ptr() for t in spoiled}
    del spoiled
    y = patch_conv(x, w, b, pb, patch_size=3, scale=0.25, activation="relu")
    grad_x = torch.autograd.grad(y, x, torch.ones_like(y))[0]
    assert grad_x.data_ptr() in addresses  # the test is void unless grad_x got spoiled memory
    doubles = [t.detach().double().requires_grad_() for t in (x, w, b, pb)]
    expected = conv1d_reference(*doubles, 3, 0.25, "relu")
    torch.testing.assert_close(grad_x.double(), torch.autograd.grad(expected, doubles[0], torch.ones_like(expected))[0],
                               rtol=1e-4, atol=1e-4)


def test_token_patch_embed_large_output():
    need_extension()
    for seed in (0, 1):
        tokens, table, b, pb = token_sample(512, 16, 32, 128, 2, torch.uint8, torch.float32, seed=seed)
        y = token_patch_embed(tokens, table, b, pb, patch_size=2, scale=1.0, activation="relu")
        assert y.nbytes >= 4 * MIB
        one_hot = F.one_hot(tokens.long(), 32).double()
        weight = table.double().permute(2, 0, 1).reshape(128, -1)
        expected = conv1d_reference(one_hot, weight, b.double(), pb.double(), 2, 1.0, "relu")
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
