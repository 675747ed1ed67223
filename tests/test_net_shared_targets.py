"""Running the target tower once per distinct target crop gives the same outputs and gradients as the expanded
batch (what the trainer relies on to nearly halve its conv work)."""

from __future__ import annotations

import torch

from model.net import GoturnNet, pair_runs, unique_consecutive_crops


def test_unique_consecutive_crops_finds_runs() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2))
    crops = torch.cat([a, a, a, b, b, a])  # a pair boundary, then the same crop again later: a new run
    uniq, index = unique_consecutive_crops(crops)
    assert index.tolist() == [0, 0, 0, 1, 1, 2]
    torch.testing.assert_close(uniq[index], crops, rtol=0, atol=0)


def test_pair_runs_from_the_layout_equal_runs_from_the_pixels() -> None:
    g = torch.Generator().manual_seed(2)
    distinct = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=g)
    for offset in range(11):
        for n in (1, 11, 30, 50):
            crops = distinct.repeat_interleave(11, dim=0)[offset : offset + n]
            first, index = pair_runs(n, offset, 11)
            uniq, ref = unique_consecutive_crops(crops)
            assert torch.equal(index, ref) and torch.equal(crops[first], uniq), (offset, n)


def test_shared_target_forward_and_backward_equal_expanded() -> None:
    torch.manual_seed(0)
    net = GoturnNet(init="random-features").train()
    net.dropout.p = 0.0  # compare deterministic passes
    g = torch.Generator().manual_seed(1)
    distinct = torch.randn(2, 3, 227, 227, generator=g) * 50
    target = distinct.repeat_interleave(3, dim=0)
    search = torch.randn(6, 3, 227, 227, generator=g) * 50
    uniq, index = unique_consecutive_crops(target)
    assert uniq.shape[0] == 2
    expanded = net(target, search)
    expanded.sum().backward()
    grads = [p.grad.clone() for p in net.fc_weights()]
    net.zero_grad()
    shared = net(uniq, search, index)
    shared.sum().backward()
    torch.testing.assert_close(shared, expanded, rtol=1e-5, atol=1e-4)
    for a, b in zip(grads, (p.grad for p in net.fc_weights()), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
