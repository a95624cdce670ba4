"""lfm_core.compare: continuing pretrained networks, and saving and loading them."""

import json

import pytest
import torch

from lfm_core import compare, nets, toy


def _source(n, g):
    return torch.randn(n, 2, generator=g)


def test_start_continues_given_weights_and_adds_their_seconds():
    data = toy.sample("8gaussians", 512, generator=torch.Generator().manual_seed(0))
    fresh, fresh_s = compare.train_methods(lambda: nets.MLP(2, 16, 2), _source, data, methods=("I-CFM",), steps=5,
                                           progress=False)
    torch.manual_seed(3)
    other = nets.MLP(2, 16, 2)
    cont, cont_s = compare.train_methods(lambda: nets.MLP(2, 16, 2), _source, data, methods=("I-CFM",), steps=1,
                                         lr=1e-12, progress=False, start={"I-CFM": other.state_dict()},
                                         start_seconds={"I-CFM": 100.0})
    for a, b in zip(cont["I-CFM"].parameters(), other.parameters(), strict=True):   # a step of lr 1e-12 keeps them
        assert torch.allclose(a, b, atol=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(fresh["I-CFM"].parameters(), other.parameters(), strict=True))
    assert cont_s["I-CFM"] >= 100.0 and fresh_s["I-CFM"] < 100.0
    with pytest.raises(ValueError, match="start"):
        compare.train_methods(lambda: nets.MLP(2, 16, 2), _source, data, methods=("I-CFM",), steps=1,
                              start={"FM": other.state_dict()})
    with pytest.raises(ValueError, match="start_seconds"):
        compare.train_methods(lambda: nets.MLP(2, 16, 2), _source, data, methods=("I-CFM",), steps=1,
                              start_seconds={"reflow": 1.0})


def test_save_and_load_pretrained_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    models = {"I-CFM": nets.MLP(2, 8, 2), "OT-CFM": nets.MLP(2, 8, 2)}
    compare.save_pretrained(tmp_path / "straight_flows_moons", models, {"I-CFM": 1.5, "OT-CFM": 2.0},
                            {"command": "python make.py"})
    states, seconds, record = compare.load_pretrained("moons", root=tmp_path)
    assert seconds == {"I-CFM": 1.5, "OT-CFM": 2.0} and record["command"] == "python make.py"
    for name, model in models.items():
        for k, v in model.state_dict().items():
            assert torch.equal(states[name][k], v)
    assert json.loads((tmp_path / "straight_flows_moons" / "config.json").read_text())["model_config"]["I-CFM"]
    with pytest.raises(FileNotFoundError, match="train_straight_flows"):
        compare.load_pretrained("8gaussians", root=tmp_path)
    with pytest.raises(ValueError, match="unknown methods"):
        compare.save_pretrained(tmp_path / "x", {"FM": nets.MLP(2, 8, 2)}, {"FM": 1.0}, {})


@pytest.mark.parametrize("task", ["8gaussians", "moons"])
def test_the_committed_networks_load_into_the_notebook_architecture(task):
    states, seconds, record = compare.load_pretrained(task)
    assert set(states) == set(compare.METHODS) and record["settings"]["steps"] >= 2000
    assert record["command"].startswith("python scripts/train_straight_flows.py")
    for name, state in states.items():
        model = nets.MLP(2, 64, 3)
        model.load_state_dict(state)
        assert seconds[name] > 0
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(8, 2), torch.rand(8))).all()
