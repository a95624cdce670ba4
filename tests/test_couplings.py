import time

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lfm_core.couplings import pair, pair_indices, plan


def mean_cost(a, b):
    return float((a - b).pow(2).reshape(a.shape[0], -1).sum(1).mean())


def emd2(a, b):
    n = a.shape[0]
    cost = torch.cdist(a.reshape(n, -1).double(), b.reshape(n, -1).double()).pow(2).numpy()
    return float(ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), cost))


def is_permutation(idx, n):
    return sorted(idx.tolist()) == list(range(n))


def test_independent_is_identity(gen):
    x0, x1 = torch.randn(10, 2, generator=gen), torch.randn(10, 2, generator=gen)
    a, b = pair(x0, x1, "independent")
    assert torch.equal(a, x0) and torch.equal(b, x1)


def test_ot_cost_equals_emd2_and_is_a_permutation(gen):
    x0, x1 = torch.randn(128, 2, generator=gen), 3 + torch.randn(128, 2, generator=gen)
    i0, i1 = pair_indices(x0, x1, "ot", generator=gen)
    assert is_permutation(i0, 128) and torch.equal(i1, torch.arange(128))
    a, b = x0[i0], x1[i1]
    assert mean_cost(a, b) == pytest.approx(emd2(x0, x1), rel=1e-6)
    assert mean_cost(a, b) < mean_cost(x0, x1)  # better than the independent pairing


def test_ot_on_images_flattens_points(gen):
    x0, x1 = torch.randn(16, 3, 4, 4, generator=gen), torch.randn(16, 3, 4, 4, generator=gen)
    a, b = pair(x0, x1, "ot", generator=gen)
    assert a.shape == x0.shape and torch.equal(b, x1)
    assert mean_cost(a, b) == pytest.approx(emd2(x0, x1), rel=1e-6)


SLOW_SINKHORN = pytest.mark.filterwarnings("ignore:Sinkhorn stopped after")  # small reg / cost: expected


@SLOW_SINKHORN
def test_sinkhorn_permutation_interpolates_between_ot_and_independent(gen):
    x0, x1 = torch.randn(96, 2, generator=gen), torch.randn(96, 2, generator=gen) + 2
    exact = emd2(x0, x1)
    small = mean_cost(*pair(x0, x1, "sinkhorn", reg=0.05, generator=gen))
    large = np.mean([mean_cost(*pair(x0, x1, "sinkhorn", reg=1e4, generator=gen)) for _ in range(10)])
    assert small == pytest.approx(exact, rel=0.05)
    all_pairs = float(torch.cdist(x0.double(), x1.double()).pow(2).mean())
    assert large == pytest.approx(all_pairs, rel=0.1)
    i0, _ = pair_indices(x0, x1, "sinkhorn", reg=0.5, generator=gen)
    assert is_permutation(i0, 96)


def test_plan_marginals(gen):
    x0, x1 = torch.randn(40, 2, generator=gen), torch.randn(40, 2, generator=gen)
    for method in ("independent", "ot", "sinkhorn"):
        pi = plan(x0, x1, method, reg=0.5)
        np.testing.assert_allclose(pi.sum(0) * 40, 1.0, rtol=1e-4)
        np.testing.assert_allclose(pi.sum(1) * 40, 1.0, rtol=1e-4)


def test_replace_samples_pairs_from_the_plan(gen):
    x0, x1 = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen)
    pi = plan(x0, x1, "ot")
    i0, i1 = pair_indices(x0, x1, "ot", replace=True, generator=gen)
    assert (pi[i0.numpy(), i1.numpy()] > 0).all()  # every pair is in the support of the plan
    # with replacement, points are duplicated and dropped (with overwhelming probability at B = 64)
    assert len(set(i1.tolist())) < 64


def test_generator_makes_it_reproducible():
    x0, x1 = torch.randn(50, 2), torch.randn(50, 2)
    a = pair_indices(x0, x1, "sinkhorn", reg=0.3, generator=torch.Generator().manual_seed(7))
    b = pair_indices(x0, x1, "sinkhorn", reg=0.3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("replace", [False, True])
@pytest.mark.parametrize("method", ["independent", "ot", "sinkhorn"])
def test_labels_keep_classes_in_place(method, replace, gen):
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2, 2, 2, 0, 1])
    x1 = labels[:, None].float() * 10 + torch.randn(16, 2, generator=gen)
    x0 = torch.randn(16, 2, generator=gen)
    i0, i1 = pair_indices(x0, x1, method, labels=labels, replace=replace, reg=0.5, generator=gen)
    assert torch.equal(labels[i1], labels)  # output position k has class labels[k]
    if not replace:
        assert is_permutation(i0, 16) and torch.equal(i1, torch.arange(16))


def test_ot_within_labels_is_optimal_per_class(gen):
    labels = torch.arange(60) % 3
    x0, x1 = torch.randn(60, 2, generator=gen), torch.randn(60, 2, generator=gen) + labels[:, None]
    a, b = pair(x0, x1, "ot", labels=labels, generator=gen)
    for c in range(3):
        m = labels == c
        assert mean_cost(a[m], b[m]) == pytest.approx(emd2(a[m], b[m]), rel=1e-6)


@pytest.mark.parametrize("replace", [False, True])
def test_block_ot_is_optimal_within_each_block(replace, gen):
    labels = torch.arange(100) % 2
    x0, x1 = torch.randn(100, 2, generator=gen), torch.randn(100, 2, generator=gen) + 2
    i0, i1 = pair_indices(x0, x1, "ot", block_size=32, labels=labels, replace=replace, generator=gen)
    assert torch.equal(labels[i1], labels)
    if not replace:
        assert is_permutation(i0, 100) and torch.equal(i1, torch.arange(100))
    # blocks: better than independent, worse than (or equal to) the whole-batch optimum
    full = emd2(x0, x1)
    blocked = mean_cost(*pair(x0, x1, "ot", block_size=32, generator=gen))
    assert full <= blocked + 1e-9 < mean_cost(x0, x1)


@pytest.mark.parametrize("method", ["ot", "sinkhorn"])
def test_groups_couple_independent_batches_in_one_call(method, gen):
    groups = torch.arange(3).repeat_interleave(40)  # three minibatches of 40, one after the other
    x0 = torch.randn(120, 2, generator=gen)
    x1 = torch.randn(120, 2, generator=gen) + groups[:, None].float() * 10
    i0, i1 = pair_indices(x0, x1, method, reg=1.0, groups=groups, block_size=16, generator=gen)
    assert torch.equal(groups[i0], groups) and torch.equal(groups[i1], groups)  # both sides stay in their group
    assert is_permutation(i0, 120) and torch.equal(i1, torch.arange(120))
    if method == "ot":  # without blocks, each group gets its own optimal plan
        a, b = pair(x0, x1, "ot", groups=groups, generator=gen)
        for g in range(3):
            m = groups == g
            assert mean_cost(a[m], b[m]) == pytest.approx(emd2(x0[m], x1[m]), rel=1e-6)


def test_block_size_at_least_the_batch_is_the_full_coupling(gen):
    x0, x1 = torch.randn(40, 2, generator=gen), torch.randn(40, 2, generator=gen)
    a = pair(x0, x1, "ot", block_size=40, generator=gen)
    assert mean_cost(*a) == pytest.approx(emd2(x0, x1), rel=1e-6)


@SLOW_SINKHORN
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 24), rest=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       method=st.sampled_from(["independent", "ot", "sinkhorn"]), n_classes=st.integers(0, 3),
       block=st.sampled_from([None, 1, 3, 8]), seed=st.integers(0, 2**16))
def test_property_permutation_for_any_shape(n, rest, method, n_classes, block, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *rest, generator=g)
    x1 = torch.randn(n, *rest, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g) if n_classes else None
    a, b = pair(x0, x1, method, reg=0.5, labels=labels, block_size=block, generator=g)
    assert a.shape == x0.shape and torch.equal(b, x1)
    # a true permutation: the multiset of source points is unchanged
    key = lambda x: sorted(map(tuple, x.reshape(n, -1).tolist()))  # noqa: E731
    assert key(a) == key(x0)


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "x0, x1, kwargs, err, match",
    [
        (torch.randn(5, 2), torch.randn(6, 2), {}, ValueError, "same batch size"),
        (torch.randn(5, 2), torch.randn(5, 3), {}, ValueError, "same point shape"),
        (torch.zeros(0, 2), torch.zeros(0, 2), {}, ValueError, "empty"),
        (torch.tensor([[float("nan"), 0.0]] * 3), torch.randn(3, 2), {}, ValueError, "x0 contains"),
        (torch.randn(3, 2), torch.tensor([[float("inf"), 0.0]] * 3), {}, ValueError, "x1 contains"),
        (torch.randn(3, 2), torch.randn(3, 2), {"reg": 0.0}, ValueError, "reg must be > 0"),
        (torch.randn(3, 2), torch.randn(3, 2), {"reg": -1.0}, ValueError, "reg"),
        (torch.randn(3, 2), torch.randn(3, 2), {"reg": float("nan")}, ValueError, "reg must be finite"),
        (torch.randn(3, 2), torch.randn(3, 2), {"tol": 0.0}, ValueError, "tol must be > 0"),
        (torch.randn(3, 2), torch.randn(3, 2), {"method": "emd"}, ValueError, "unknown coupling method 'emd'"),
        (torch.randn(3, 2), torch.randn(3, 2), {"labels": torch.tensor([0, 1])}, ValueError, "labels must have shape"),
        (torch.randn(3, 2), torch.randn(3, 2), {"labels": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "integers"),
        (torch.randn(3, 2), torch.randn(3, 2), {"replace": 1}, TypeError, "replace must be a bool"),
        (torch.randn(3, 2), torch.randn(3, 2), {"block_size": 0}, ValueError, "block_size must be >= 1"),
        (torch.randn(3, 2), torch.randn(3, 2), {"groups": torch.tensor([0, 1])}, ValueError, "groups must have shape"),
        (torch.randn(3, 2), torch.randn(3, 2), {"groups": torch.zeros(3, dtype=torch.long),
                                                "labels": torch.zeros(3, dtype=torch.long)}, ValueError, "not both"),
        (torch.randn(3, 2), torch.randn(3, 2), {"block_size": 2.0}, TypeError, "block_size must be an int"),
        (np.zeros((3, 2)), torch.randn(3, 2), {}, TypeError, "x0 must be a torch.Tensor"),
    ],
)
def test_bad_inputs(x0, x1, kwargs, err, match):
    method = kwargs.pop("method", "ot")
    with pytest.raises(err, match=match):
        pair(x0, x1, method, **kwargs)


def test_sinkhorn_matches_pot_and_solves_batches(gen):
    from lfm_core.couplings import sinkhorn

    x0, x1 = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64), torch.randn(3, 40, 2, generator=gen,
                                                                                      dtype=torch.float64) + 1
    cost = torch.cdist(x0, x1).pow(2)
    plans = sinkhorn(cost, 0.5, tol=1e-10)
    w = np.full(40, 1 / 40)
    for k in range(3):
        ref = ot.sinkhorn(w, w, cost[k].numpy(), 0.5, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
        np.testing.assert_allclose(plans[k].numpy(), ref, atol=1e-9)
        np.testing.assert_allclose(plans[k].sum(0).numpy(), w, rtol=1e-8)
    # cost / reg up to ~1000: exp(-C / reg) would underflow to 0 in float64; the log domain does not
    big = sinkhorn(cost[0] * 30, 0.5, tol=1e-3)
    assert float(cost[0].max()) * 30 / 0.5 > 745  # exp(-745) is below the smallest float64
    assert torch.isfinite(big).all() and abs(float(big.sum()) - 1) < 1e-3


def test_sinkhorn_that_stops_early_raises_with_its_marginal_error(gen):
    from lfm_core.couplings import ConvergenceError, sinkhorn

    cost = torch.cdist(torch.randn(30, 2, generator=gen), torch.randn(30, 2, generator=gen)).pow(2)
    with pytest.raises(ConvergenceError, match=r"after 20 iterations the relative marginal error is \d"):
        sinkhorn(cost, 1.0, tol=1e-12, max_iter=20)
    with pytest.raises(ValueError, match="cost must have shape"):
        sinkhorn(torch.zeros(2, 2, 2, 2), 1.0)


def test_sinkhorn_refuses_a_reg_it_cannot_converge_at(gen):
    """reg = 1e-6 on 8-Gaussian costs: it used to return a plan no better than random with only a warning."""
    from lfm_core import couplings, toy

    x0, x1 = toy.sample("gaussian", 64, generator=gen), toy.sample("8gaussians", 64, generator=gen)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"reg = 1e-06 is too small .* Use reg >= "):
        couplings.pair(x0, x1, "sinkhorn", reg=1e-6)
    assert time.perf_counter() - start < 1.0  # refused before iterating
    # the smallest reg it names does work (up to max_iter iterations)
    cmax = float(couplings._cost(x0, x1).max())
    plan = couplings.sinkhorn(couplings._cost(x0, x1), cmax / 1000, tol=1e-3)
    assert abs(float(plan.sum()) - 1) < 1e-3


def test_sinkhorn_on_a_huge_block_asks_for_block_size(gen):
    from lfm_core import couplings

    x = torch.randn(couplings.SINKHORN_MAX_POINTS + 1, 2, generator=gen)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="block_size"):
        couplings.pair(x, x + 1, "sinkhorn")
    assert time.perf_counter() - start < 2.0
    i0, _ = couplings.pair_indices(x, x + 1, "sinkhorn", reg=0.5, block_size=512)  # what it suggests works
    assert sorted(i0.tolist()) == list(range(x.shape[0]))
