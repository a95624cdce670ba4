"""lfm_core.pretrained: networks stored ahead of time, and how quick mode starts from them."""

import pytest
import torch

from lfm_core import nets, paths, pretrained, store, training


def _fit(model, steps):
    return training.train_cfm(model, paths.LinearPath(0.0), lambda n, g: torch.randn(n, 2, generator=g),
                              lambda n, g: torch.randn(n, 2, generator=g) + 3, steps=steps, batch_size=8,
                              progress=False)


def test_add_and_load_round_trip_keep_other_entries_and_halve_on_request(tmp_path):
    a, b = nets.MLP(2, 128, 2), nets.MLP(2, 128, 2)   # large enough that the tensors, not the header, dominate
    pretrained.add(tmp_path, "a", a, {"steps": 5})
    pretrained.add(tmp_path, "b", b, {"steps": 7}, half=True)
    states, records = pretrained.load(tmp_path)
    assert sorted(states) == ["a", "b"] and records == {"a": {"steps": 5}, "b": {"steps": 7}}
    assert store.verify(tmp_path / "b")["dtype"] == "float16" and store.verify(tmp_path / "a")["dtype"] == "float32"
    for k, v in a.state_dict().items():
        assert torch.equal(states["a"][k], v)                       # float32 stored exactly
    for k, v in b.state_dict().items():
        assert states["b"][k].dtype == torch.float32                # read back in float32
        torch.testing.assert_close(states["b"][k], v, atol=2e-3, rtol=1e-3)
    size = {e: (tmp_path / e / "model.safetensors").stat().st_size for e in "ab"}
    assert size["b"] < 0.6 * size["a"]
    assert store.verify(tmp_path / "a")["config"] == a.config and store.verify(tmp_path / "a")["_class_name"] == "MLP"
    assert pretrained.load(tmp_path, entries=["b"])[0].keys() == {"b"}


def test_a_failed_add_leaves_the_previous_network_and_a_corrupt_one_is_named(tmp_path, monkeypatch):
    old = nets.MLP(2, 8, 1)
    pretrained.add(tmp_path, "a", old, {"steps": 1})

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        pretrained.add(tmp_path, "a", nets.MLP(2, 8, 1), {"steps": 2})
    monkeypatch.undo()
    states, records = pretrained.load(tmp_path)
    assert records == {"a": {"steps": 1}} and all(torch.equal(states["a"][k], v) for k, v in old.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["a"]                       # no temporary folder left
    raw = bytearray((tmp_path / "a" / "model.safetensors").read_bytes())
    raw[-3] ^= 0x10
    (tmp_path / "a" / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(store.StoreError, match="model.safetensors does not match its checksum"):
        pretrained.load(tmp_path)


def test_load_and_add_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="tasks.py pretrain"):
        pretrained.load(tmp_path)
    pretrained.add(tmp_path, "a", nets.MLP(2, 8, 1), {})
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(store.StoreError, match="a/model.safetensors is missing"):
        pretrained.load(tmp_path)
    with pytest.raises(TypeError, match="folder must be a path"):
        pretrained.add(3, "x", nets.MLP(2, 8, 1), {})
    with pytest.raises(TypeError, match="record must be JSON-serialisable"):
        pretrained.add(tmp_path, "x", nets.MLP(2, 8, 1), {"when": object()})
    with pytest.raises(ValueError, match="entry"):
        pretrained.add(tmp_path, "../x", nets.MLP(2, 8, 1), {})
    with pytest.raises(TypeError, match="model"):
        pretrained.add(tmp_path, "x", {"w": torch.ones(1)}, {})
    with pytest.raises(TypeError, match="record"):
        pretrained.add(tmp_path, "x", nets.MLP(2, 8, 1), [])


def test_start_and_finish_by_mode(tmp_path, monkeypatch):
    stored = nets.MLP(2, 16, 1)
    # pretraining writes: start leaves the network as it is and asks for the pretraining length
    monkeypatch.setenv("LFM_MODE", "pretrain")
    steps, start = pretrained.start(stored, tmp_path, "m", steps=2, pretrain_steps=4)
    assert (steps, start) == (4, None)
    res = _fit(stored, steps)
    pretrained.finish(stored, tmp_path, "m", res, {"batch": 8})
    record = pretrained.load(tmp_path)[1]["m"]
    assert record["steps"] == 4 and len(record["losses"]) == 4 and record["settings"] == {"batch": 8}
    # quick mode continues the stored weights for the short length
    monkeypatch.setenv("LFM_MODE", "quick")
    fresh = nets.MLP(2, 16, 1)
    steps, start = pretrained.start(fresh, tmp_path, "m", steps=2, pretrain_steps=4)
    assert steps == 2 and start["steps"] == 4
    for k, v in stored.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, atol=2e-3, rtol=1e-3)   # stored in float16
    pretrained.finish(fresh, tmp_path / "elsewhere", "m", res)                       # not pretraining: no write
    assert not (tmp_path / "elsewhere").exists()
    # a mismatch between the stored length and the notebook's is an error, as are unknown entries
    with pytest.raises(ValueError, match="pretrained for 4 steps"):
        pretrained.start(nets.MLP(2, 16, 1), tmp_path, "m", steps=2, pretrain_steps=5)
    with pytest.raises(KeyError, match="no network 'other'"):
        pretrained.start(nets.MLP(2, 16, 1), tmp_path, "other", steps=2, pretrain_steps=4)
    # full mode, and entry=None anywhere: the network as initialised, the given steps
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert pretrained.start(fresh, tmp_path, None, steps=3, pretrain_steps=4) == (3, None)
    monkeypatch.setenv("LFM_MODE", "full")
    assert pretrained.start(fresh, tmp_path, "m", steps=3, pretrain_steps=4) == (3, None)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_another_seed_trains_from_scratch_and_never_writes(tmp_path, monkeypatch):
    """The stored networks are seed 0's: quick mode with LFM_SEED=1 trains for the pretraining length instead
    of loading them, and pretraining (which writes them) refuses any other seed."""
    monkeypatch.setenv("LFM_MODE", "quick")
    torch.manual_seed(0)
    stored = nets.MLP(2, 16, 1)
    pretrained.add(tmp_path, "m", stored, {"steps": 4})
    monkeypatch.setenv("LFM_SEED", "1")
    fresh = nets.MLP(2, 16, 1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert pretrained.start(fresh, tmp_path, "m", steps=2, pretrain_steps=4) == (4, None)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    monkeypatch.setenv("LFM_MODE", "pretrain")
    with pytest.raises(ValueError, match="LFM_SEED is 1"):
        pretrained.start(fresh, tmp_path, "m", steps=2, pretrain_steps=4)
    monkeypatch.setenv("LFM_SEED", "0")
    assert pretrained.start(fresh, tmp_path, "m", steps=2, pretrain_steps=4) == (4, None)


def test_start_refuses_bad_arguments(tmp_path, monkeypatch):
    for kwargs, match in [(dict(steps=0, pretrain_steps=1), "steps"),
                          (dict(steps=1, pretrain_steps=1.5), "pretrain_steps"),
                          (dict(steps=True, pretrain_steps=1), "steps")]:
        with pytest.raises(ValueError, match=match):
            pretrained.start(nets.MLP(2, 8, 1), tmp_path, "m", **kwargs)
    with pytest.raises(ValueError, match="entry"):
        pretrained.start(nets.MLP(2, 8, 1), tmp_path, "a/b", steps=1, pretrain_steps=1)
    monkeypatch.setenv("LFM_MODE", "pretraining")
    with pytest.raises(ValueError, match="LFM_MODE"):
        pretrained.pretraining()


def test_the_notebooks_pretrained_networks_load_into_their_architectures():
    """The committed networks of notebooks 04 and 05: every entry loads into the network the notebook builds."""
    from lfm_core import conditioning as C

    builders = {
        ("notebook04", "fashion"): lambda: nets.UNetVelocity(4, 8, preset="tiny"),
        ("notebook05", "fashion-independent"): lambda: nets.UNetVelocity(4, 8, preset="tiny", num_classes=10),
        ("notebook05", "fashion-ot-labels"): lambda: nets.UNetVelocity(4, 8, preset="tiny", num_classes=10),
        ("notebook05", "fashion-no-dropout"): lambda: nets.UNetVelocity(4, 8, preset="tiny", num_classes=10),
        ("notebook05", "fashion-global-ot"): lambda: nets.UNetVelocity(4, 8, preset="tiny", num_classes=10),
        ("notebook05", "inpainter"): lambda: nets.UNetVelocity(4, 8, preset="tiny", cond_channels=5),
        ("notebook05", "semantic"): lambda: C.ConditionedVelocity(
            nets.UNetVelocity(4, 8, preset="tiny", cond_channels=4), C.SemanticEncoder(3, 8, out_channels=4)),
    }
    for folder in ("notebook04", "notebook05"):
        states, records = pretrained.load(folder)
        assert sorted(states) == sorted(e for f, e in builders if f == folder)
        for entry, state in states.items():
            builders[folder, entry]().load_state_dict(state)          # strict: every key and shape matches
            assert records[entry]["steps"] == len(records[entry]["losses"]) > 0


def test_history_and_summary_join_the_pretraining_and_the_continuation():
    from lfm_core.trainer import FitResult

    res = FitResult(losses=[0.5, 0.4], seconds=2.0)
    start = {"steps": 3, "seconds": 30.2, "losses": [3.0, 2.0, 1.0]}
    assert pretrained.history(start, res) == [3.0, 2.0, 1.0, 0.5, 0.4]
    assert pretrained.history(None, res) == [0.5, 0.4]
    assert pretrained.summary(start, res) == "3 pretrained steps (30 s) + 2 steps in 2.0 s (1000 ms/step)"
    assert pretrained.summary(None, res) == "2 steps in 2.0 s (1000 ms/step)"
    for f in (pretrained.history, pretrained.summary):
        with pytest.raises(TypeError, match="start must be the record"):
            f(3, res)


def test_bad_arguments_are_refused_naming_them(tmp_path):
    """Issue 24: an empty folder (which meant the package's assets themselves) is refused by add and load, so
    nothing is written into lfm_core/assets/; load names an unknown asset folder and bad entries; start and
    history check the model and the result."""
    before = sorted(p.name for p in pretrained.ASSETS.iterdir())
    for bad in ("", " ", ".", ".."):
        with pytest.raises(ValueError, match="folder"):
            pretrained.add(bad, "x", nets.MLP(2, 8, 1), {})
        with pytest.raises(ValueError, match="folder"):
            pretrained.load(bad)
    assert sorted(p.name for p in pretrained.ASSETS.iterdir()) == before
    with pytest.raises(ValueError, match=r"folder 'no_such_asset' is not a folder of the package's assets "
                                         r"\(known: .*straight_flows_moons"):
        pretrained.load("no_such_asset")
    with pytest.raises(FileNotFoundError, match="no pretrained networks in .*missing"):   # a path of yours
        pretrained.load(tmp_path / "missing")
    pretrained.add(tmp_path, "a", nets.MLP(2, 8, 1), {"steps": 1})
    for bad in (3, "a", [3]):
        with pytest.raises(TypeError, match="entries must be a list of entry names or None"):
            pretrained.load(tmp_path, entries=bad)
    with pytest.raises(ValueError, match="entries is empty"):
        pretrained.load(tmp_path, entries=[])
    with pytest.raises(ValueError, match=r"entries \['nope'\] are not in .* \(it holds \['a'\]\)"):
        pretrained.load(tmp_path, entries=["nope"])
    assert pretrained.load(tmp_path, entries=("a",))[0].keys() == {"a"}
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        pretrained.start("m", "straight_flows_moons", None, steps=3, pretrain_steps=5)
    with pytest.raises(TypeError, match="result must be the FitResult"):
        pretrained.history(None, "r")
    with pytest.raises(TypeError, match="result must be the FitResult"):
        pretrained.summary(None, "r")


def test_finish_stores_skipped_steps_as_null_and_history_gives_them_back_as_nan(tmp_path, monkeypatch):
    """A record holds JSON only (store refuses NaN): a skipped step's NaN loss is stored as null, read as NaN."""
    from lfm_core.trainer import FitResult

    monkeypatch.setenv("LFM_MODE", "pretrain")
    model = nets.MLP(2, 8, 1)
    pretrained.finish(model, tmp_path, "m", FitResult(losses=[1.0, float("nan"), 0.5], seconds=1.0))
    record = pretrained.load(tmp_path)[1]["m"]
    assert record["losses"] == [1.0, None, 0.5] and record["steps"] == 3
    joined = pretrained.history(record, FitResult(losses=[0.4], seconds=0.1))
    assert joined[0] == 1.0 and joined[1] != joined[1] and joined[2:] == [0.5, 0.4]
