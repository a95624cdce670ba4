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


SLOW_SINKHORN = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")  # small reg / cost: expected


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


@SLOW_SINKHORN
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 24), rest=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       method=st.sampled_from(["independent", "ot", "sinkhorn"]), n_classes=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_property_permutation_for_any_shape(n, rest, method, n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *rest, generator=g)
    x1 = torch.randn(n, *rest, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g) if n_classes else None
    a, b = pair(x0, x1, method, reg=0.5, labels=labels, generator=g)
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
        (torch.randn(3, 2), torch.randn(3, 2), {"method": "emd"}, ValueError, "unknown coupling method 'emd'"),
        (torch.randn(3, 2), torch.randn(3, 2), {"labels": torch.tensor([0, 1])}, ValueError, "labels must have shape"),
        (torch.randn(3, 2), torch.randn(3, 2), {"labels": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "integers"),
        (torch.randn(3, 2), torch.randn(3, 2), {"replace": 1}, TypeError, "replace must be a bool"),
        (np.zeros((3, 2)), torch.randn(3, 2), {}, TypeError, "x0 must be a torch.Tensor"),
    ],
)
def test_bad_inputs(x0, x1, kwargs, err, match):
    method = kwargs.pop("method", "ot")
    with pytest.raises(err, match=match):
        pair(x0, x1, method, **kwargs)
