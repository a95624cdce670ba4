"""The shared checks and helpers of lfm_core.utils on bad inputs: each refused before work, naming the argument."""

import math

import numpy as np
import pytest
import torch

from lfm_core import utils

X = torch.zeros(4, 2)


@pytest.mark.parametrize("batch, err", [("3", TypeError), (2.5, TypeError), (True, TypeError), (2 + 0j, TypeError),
                                        (math.nan, TypeError), (math.inf, TypeError), (0, ValueError),
                                        (-5, ValueError)])
def test_as_time_refuses_a_bad_batch_naming_it(batch, err):
    with pytest.raises(err, match="batch must be"):
        utils.as_time(0.5, batch, like=X)


@pytest.mark.parametrize("like", ["abc", 3.0, None])
def test_as_time_refuses_a_like_that_is_not_a_tensor(like):
    with pytest.raises(TypeError, match="like must be a torch.Tensor"):
        utils.as_time(0.5, 4, like=like)


def test_as_time_valid_inputs_unchanged():
    assert torch.equal(utils.as_time(0.25, 4, like=X), torch.full((4,), 0.25))
    assert torch.equal(utils.as_time(torch.tensor(0.5), 4, like=X), torch.full((4,), 0.5))


def test_expand_like_checks_the_type_and_shape_of_t():
    assert utils.expand_like(torch.arange(4.0), torch.zeros(4, 2, 3)).shape == (4, 1, 1)
    with pytest.raises(ValueError, match=r"t must have shape \[B\] \(x's batch\), got t \(5,\)"):
        utils.expand_like(torch.full((5,), 0.5), X)
    with pytest.raises(ValueError, match="t must have shape"):
        utils.expand_like(torch.zeros(4, 1), X)
    with pytest.raises(TypeError, match="t and x must be torch.Tensors, got str"):
        utils.expand_like("a", X)


@pytest.mark.parametrize("kwargs, match", [(dict(x="abc"), "x must be a torch.Tensor"),
                                           (dict(x=3.0), "x must be a torch.Tensor"),
                                           (dict(x=X, generator="g"), "generator must be a torch.Generator"),
                                           (dict(x=X, generator=42), "generator must be a torch.Generator")])
def test_randn_like_refuses_bad_arguments(kwargs, match):
    with pytest.raises(TypeError, match=match):
        utils.randn_like(**kwargs)


def test_randn_like_and_draw_device_valid_inputs_unchanged():
    a = utils.randn_like(X, torch.Generator().manual_seed(1))
    assert torch.equal(a, torch.randn(4, 2, generator=torch.Generator().manual_seed(1)))
    assert utils.draw_device(None, "cpu") == "cpu"
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        utils.draw_device(42, "cpu")


@pytest.mark.parametrize("tensors", ["x", [1.0], [torch.ones(2), 3]])
def test_global_norm_refuses_what_is_not_a_list_of_tensors(tensors):
    with pytest.raises(TypeError, match="tensors must be a list of torch.Tensors"):
        utils.global_norm(tensors)


def test_global_norm_valid_inputs_unchanged():
    assert float(utils.global_norm([torch.tensor([3.0]), torch.tensor([4.0])])) == pytest.approx(5.0)
    assert float(utils.global_norm(iter([torch.tensor([3.0, 4.0])]))) == pytest.approx(5.0)


@pytest.mark.parametrize("value", ["x", 1j, True, None])
def test_running_median_add_refuses_what_is_not_a_real_number(value):
    med = utils.RunningMedian(5)
    with pytest.raises(TypeError, match="value must be a real number"):
        med.add(value)
    assert len(med) == 0


def test_running_median_valid_inputs_unchanged():
    med = utils.RunningMedian(3, [1.0, 5.0, math.nan, 2.0, 7.0])
    assert med.median() == 5.0 and len(med) == 3


@pytest.mark.parametrize("value, message", [
    ("1, 2", "x must be a tensor or a sequence of numbers, got str"),
    (True, "got bool"),
    (None, "got NoneType"),
    (torch.tensor([1 + 2j]), r"x must hold real numbers \(not complex or bool\)"),
    (torch.tensor([True]), "not complex or bool"),
    (np.array([1j]), "not complex or bool"),
    ([[1.0, 2.0], [3.0]], r"x must be a tensor or a sequence of numbers \("),
    (["a"], r"x must be a tensor or a sequence of numbers \("),
])
def test_as_real_names_the_argument_for_what_is_no_real_numbers(value, message):
    with pytest.raises(TypeError, match=message):
        utils.as_real(value, "x", torch.float32)


def test_as_real_converts_tensors_arrays_and_lists_to_the_dtype():
    for value in ([0, 0.5, 1], np.array([0.0, 0.5, 1.0]), torch.tensor([0, 0.5, 1], dtype=torch.float64)):
        out = utils.as_real(value, "x", torch.float32)
        assert out.dtype == torch.float32 and out.tolist() == [0.0, 0.5, 1.0]
