"""Devices: the precision a run gets, the autocast of a step, the processes, and measure_step."""

import pytest
import torch

from lfm_core import devices
from lfm_core.devices import resolve_precision


def test_precision_is_chosen_by_the_device(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_precision("bf16", "cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    assert resolve_precision("auto", "cuda") == "fp16"
    with pytest.raises(ValueError, match=r"not supported by this GPU \(Tesla T4\)"):
        resolve_precision("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda") == "bf16"


def test_measure_step_takes_the_trainers_precision_rule():
    model = torch.nn.Linear(3, 3)
    batch_fn = lambda i: {"x": torch.randn(4, 3)}   # noqa: E731
    loss_fn = lambda m, x: m(x).pow(2).mean()       # noqa: E731
    r = devices.measure_step(model, batch_fn, loss_fn, repeats=1, warmup=0, precision="auto")
    assert r["ms"] > 0 and r["peak_mb"] is None
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        devices.measure_step(model, batch_fn, loss_fn, repeats=1, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        devices.measure_step(model, batch_fn, loss_fn, repeats=1, precision="half")


def test_autocast_and_dist_info_outside_torchrun():
    with devices.autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled()
    with devices.autocast("bf16", "cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert devices.dist_info() == (0, 1)


@pytest.mark.parametrize("precision", ["no-such", "", 3, ["a"], "auto"])
def test_autocast_refuses_a_precision_it_cannot_run(precision):
    with pytest.raises(ValueError, match="precision"):
        devices.autocast(precision, "cpu")


@pytest.mark.parametrize("device, exc", [("gpu9", ValueError), (3.5, TypeError)])
def test_bad_devices_are_named(device, exc):
    with pytest.raises(exc, match="device"):
        devices.autocast("fp32", device)
    with pytest.raises(exc, match="device"):
        resolve_precision("fp32", device)
    with pytest.raises(exc, match="device"):
        devices.measure_step(torch.nn.Linear(2, 2), lambda i: {"x": torch.zeros(4, 2)},
                             lambda m, x: m(x).sum(), repeats=1, warmup=0, device=device)


@pytest.mark.parametrize("kw, name", [({"model": "m"}, "model"), ({"batch_fn": "abc"}, "batch_fn"),
                                      ({"batch_fn": 3}, "batch_fn"), ({"loss_fn": "abc"}, "loss_fn"),
                                      ({"loss_fn": 3}, "loss_fn")])
def test_measure_step_checks_its_callables_first(kw, name):
    args = dict(model=torch.nn.Linear(2, 2), batch_fn=lambda i: {"x": torch.zeros(4, 2)},
                loss_fn=lambda m, x: m(x).sum(), repeats=1, warmup=0)
    args.update(kw)
    with pytest.raises(TypeError, match=name):
        devices.measure_step(**args)
