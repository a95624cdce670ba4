"""lfm_core.compare: continuing pretrained networks, and saving and loading them."""

import pytest
import torch

from lfm_core import compare, nets, store, toy


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
    assert record["methods"] == ["I-CFM", "OT-CFM"] and record["seconds"] == seconds
    for name, model in models.items():
        for k, v in model.state_dict().items():
            assert torch.equal(states[name][k], v)
        loaded, rec = store.load(tmp_path / "straight_flows_moons" / name)   # each method: a stored network
        assert loaded.config == model.config and rec == {"command": "python make.py", "seconds": seconds[name]}
    # saving another set of methods there replaces the set
    compare.save_pretrained(tmp_path / "straight_flows_moons", {"2-RF": nets.MLP(2, 8, 2)}, {"2-RF": 3.0}, {})
    assert compare.load_pretrained("moons", root=tmp_path)[1] == {"2-RF": 3.0}
    with pytest.raises(FileNotFoundError, match="train_straight_flows"):
        compare.load_pretrained("8gaussians", root=tmp_path)
    with pytest.raises(ValueError, match="unknown methods"):
        compare.save_pretrained(tmp_path / "x", {"FM": nets.MLP(2, 8, 2)}, {"FM": 1.0}, {})
    with pytest.raises(ValueError, match="seconds has no entry"):
        compare.save_pretrained(tmp_path / "x", {"I-CFM": nets.MLP(2, 8, 2)}, {}, {})
    with pytest.raises(TypeError, match="record must be a dict"):
        compare.save_pretrained(tmp_path / "x", {"I-CFM": nets.MLP(2, 8, 2)}, {"I-CFM": 1.0}, None)


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


def _average_model():
    from lfm_core import average_velocity

    return average_velocity.AverageVelocity(nets.MLP(2, 16, 2, cond_channels=1))


def test_meanflow_is_trained_and_evaluated_by_jumps():
    from lfm_core import average_velocity, metrics

    data = toy.sample("moons", 512, generator=torch.Generator().manual_seed(0))
    models, seconds = compare.train_methods(None, _source, data, methods=("MeanFlow",), steps=3, progress=False,
                                            make_average_model=_average_model, meanflow={"power": 0.0})
    model = models["MeanFlow"]
    assert isinstance(model, average_velocity.AverageVelocity) and seconds["MeanFlow"] > 0
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    res = compare.evaluate(model, z, data[:64], steps=(1, 3))
    assert res["W2@1"] == pytest.approx(metrics.wasserstein2(average_velocity.sample(model, z).x, data[:64]))
    assert res["W2@3"] == pytest.approx(metrics.wasserstein2(average_velocity.sample(model, z, steps=3).x, data[:64]))
    # meanflow= overrides the shared budget: two runs differ only through it
    again, _ = compare.train_methods(None, _source, data, methods=("MeanFlow",), steps=3, progress=False,
                                     make_average_model=_average_model, meanflow={"power": 0.0, "steps": 1})
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), again["MeanFlow"].parameters(), strict=True))


def test_meanflow_bad_arguments(tmp_path):
    data = torch.randn(64, 2)
    with pytest.raises(ValueError, match="make_average_model"):
        compare.train_methods(lambda: nets.MLP(2, 8, 1), _source, data, methods=("MeanFlow",), steps=1)
    with pytest.raises(TypeError, match="make_model"):
        compare.train_methods(None, _source, data, methods=("I-CFM", "MeanFlow"), steps=1,
                              make_average_model=_average_model)
    with pytest.raises(TypeError, match="meanflow must be a dict"):
        compare.train_methods(None, _source, data, methods=("MeanFlow",), steps=1, make_average_model=_average_model,
                              meanflow=0.0)
    with pytest.raises(TypeError, match="second time input"):   # a plain velocity network is refused
        compare.train_methods(None, _source, data, methods=("MeanFlow",), steps=1,
                              make_average_model=lambda: nets.MLP(2, 8, 1))
    with pytest.raises(FileNotFoundError, match="--name one_step --methods MeanFlow"):
        compare.load_pretrained("moons", root=tmp_path, name="one_step")


@pytest.mark.parametrize("task", ["8gaussians", "moons"])
def test_the_committed_meanflow_networks_load_into_the_notebook_architecture(task):
    states, seconds, record = compare.load_pretrained(task, name="one_step")
    assert set(states) == {"MeanFlow"} and record["settings"]["meanflow"]["steps"] >= 4000
    assert record["command"].startswith("python scripts/train_straight_flows.py")
    from lfm_core import average_velocity

    model = average_velocity.AverageVelocity(nets.MLP(2, 64, 3, cond_channels=1))
    model.load_state_dict(states["MeanFlow"])
    assert seconds["MeanFlow"] > 0


def test_recipes_are_the_table_train_cfm_takes():
    from lfm_core import paths

    made = {m: compare.recipe(m, sigma=0.1, sb_sigma=0.5) for m in compare.RECIPES}
    assert [type(p).__name__ for p, _, _ in made.values()] == [path for path, _ in compare.RECIPES.values()]
    assert [c for _, c, _ in made.values()] == [coupling for _, coupling in compare.RECIPES.values()]
    path, coupling, kwargs = made["SB-CFM"]
    assert isinstance(path, paths.BridgePath) and path.sigma == 0.5 and kwargs == {"reg": 0.5}
    assert made["FM"][0].sigma_min == 0.1 and made["OT-CFM"][0].sigma == 0.1 and made["I-CFM"][2] == {}
    with pytest.raises(ValueError, match="method must be one of I-CFM"):
        compare.recipe("learned")
    with pytest.raises(ValueError, match="sigma"):
        compare.recipe("I-CFM", sigma=-1.0)
    with pytest.raises(ValueError, match="sb_sigma"):
        compare.recipe("SB-CFM", sb_sigma=0.0)


def test_evaluate_keys_dopri5_and_trajectory():
    from lfm_core import metrics, solvers

    torch.manual_seed(0)
    model = nets.MLP(2, 16, 2)
    z, target = torch.randn(64, 2), torch.randn(64, 2) + 2.0
    res = compare.evaluate(model, z, target, steps=(2, 8), dopri5=True, trajectory=True)
    assert set(res) == {"W2@2", "W2@8", "PE", "S", "NPE", "W2@dopri5", "NFE@dopri5", "trajectory"}
    traj = solvers.integrate(model, z, method="euler", steps=8, return_trajectory=True).trajectory
    assert torch.equal(res["trajectory"], traj)   # the finest trajectory: PE, S and NPE are its
    assert res["PE"] == pytest.approx(metrics.path_energy(traj))
    assert res["S"] == pytest.approx(metrics.straightness(traj))
    dop = solvers.integrate(model, z, method="dopri5")
    assert res["NFE@dopri5"] == dop.nfe and res["W2@dopri5"] == pytest.approx(metrics.wasserstein2(dop.x, target))
    assert set(compare.evaluate(model, z, target, steps=(1,))) == {"W2@1", "PE", "S", "NPE"}
    with pytest.raises(TypeError, match="dopri5 must be a bool"):
        compare.evaluate(model, z, target, dopri5="yes")
    with pytest.raises(TypeError, match="trajectory must be a bool"):
        compare.evaluate(model, z, target, trajectory=1)
    with pytest.raises(ValueError, match="dopri5=True integrates a velocity"):
        compare.evaluate(_average_model(), z, target, dopri5=True)


def test_bad_arguments_are_refused_naming_them(tmp_path):
    """Issue 24: save_pretrained refuses an empty folder (it would write into the current folder) and a file;
    load_pretrained names an unknown task or name and lists the known folders, and names a bad root;
    train_methods refuses a method named twice."""
    models, seconds = {"I-CFM": nets.MLP(2, 8, 2)}, {"I-CFM": 1.0}
    with pytest.raises(ValueError, match="folder is an empty path"):
        compare.save_pretrained("", models, seconds, {})
    with pytest.raises(TypeError, match="folder must be a path"):
        compare.save_pretrained(3, models, seconds, {})
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine\n")
    with pytest.raises(ValueError, match="folder .*a_file.txt is a file"):
        compare.save_pretrained(a_file, models, seconds, {})
    assert a_file.read_text() == "mine\n"
    with pytest.raises(ValueError, match=r"task 'no-such' with name 'straight_flows' has no pretrained .*known: "
                                         r".*straight_flows_moons"):
        compare.load_pretrained("no-such")
    with pytest.raises(ValueError, match="name 'no-such' has no pretrained"):
        compare.load_pretrained("moons", name="no-such")
    for bad, kind in (("", ValueError), (3, TypeError), (["a"], TypeError)):
        with pytest.raises(kind, match="task must be a non-empty str"):
            compare.load_pretrained(bad)
        with pytest.raises(kind, match="name must be a non-empty str"):
            compare.load_pretrained("moons", name=bad)
    with pytest.raises(ValueError, match="root is an empty path"):
        compare.load_pretrained("moons", root="")
    with pytest.raises(TypeError, match="root must be a path"):
        compare.load_pretrained("moons", root=3)
    with pytest.raises(FileNotFoundError, match=r"task 'moons' .*known: none"):   # a folder of yours: not found
        compare.load_pretrained("moons", root=tmp_path)
    with pytest.raises(ValueError, match=r"methods names \['I-CFM'\] more than once"):
        compare.train_methods(lambda: nets.MLP(2, 8, 2), _source, torch.randn(16, 2), methods=["I-CFM", "I-CFM"],
                              steps=1)
