"""lfm_core.store: one checksummed folder per network, written atomically, verified before it is read."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from lfm_core import average_velocity, conditioning, interpolants, nets, store


def _autoencoder():
    from diffusers import AutoencoderKL

    from lfm_core import autoencoders

    return AutoencoderKL(**autoencoders.offline_config(1, channels=(16, 16)))


BUILDERS = {
    "MLP": lambda: nets.MLP(2, 8, 2),
    "MLPEnsemble": lambda: nets.MLPEnsemble(3, 2, 8, 2),
    "AffineVelocity": lambda: nets.AffineVelocity(2, 8),
    "UNetVelocity": lambda: nets.UNetVelocity(4, 8, preset="tiny", num_classes=10),
    "DiTVelocity": lambda: nets.DiTVelocity(4, 8, preset="tiny", cond_channels=1),
    "ConditionedVelocity": lambda: conditioning.ConditionedVelocity(
        nets.UNetVelocity(4, 8, preset="tiny", cond_channels=4), conditioning.SemanticEncoder(3, 8, out_channels=4)),
    "AverageVelocity": lambda: average_velocity.AverageVelocity(nets.MLP(2, 8, 2, cond_channels=1)),
    "GlowInterpolant": lambda: interpolants.GlowInterpolant(2, layers=2, hidden=8),
    "AffineInterpolant": lambda: interpolants.AffineInterpolant(4),
    "AutoencoderKL": _autoencoder,
}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_kind_of_network_round_trips_built_from_its_config_or_into_a_given_model(kind, tmp_path):
    torch.manual_seed(0)
    model = BUILDERS[kind]()
    folder = store.save(tmp_path / "net", model, {"command": "made here", "losses": [1.0, 0.5]})
    assert sorted(p.name for p in folder.iterdir()) == ["checksums.json", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == store.FORMAT and config["_class_name"] == kind and config["dtype"] == "float32"
    assert config["config"] == store.model_config(model) and config["record"]["command"] == "made here"
    built, record = store.load(folder)                                      # built from _class_name + config
    assert type(built) is type(model) and _same(built, model) and record == config["record"]
    torch.manual_seed(1)
    given = BUILDERS[kind]()
    loaded, _ = store.load(folder, given)                                   # loaded into the model given
    assert loaded is given and _same(given, model)


def test_half_precision_is_float16_on_disk_and_float32_when_read(tmp_path):
    from safetensors.torch import load_file

    model = nets.MLP(2, 64, 2)
    store.save(tmp_path / "full", model)
    store.save(tmp_path / "half", model, half=True)
    on_disk = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert {v.dtype for v in on_disk.values()} == {torch.float16}
    assert store.verify(tmp_path / "half")["dtype"] == "float16"
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("full", "half")}
    assert size["half"] < 0.6 * size["full"]
    state, _ = store.load_state(tmp_path / "half")
    loaded, _ = store.load(tmp_path / "half")
    for k, v in model.state_dict().items():
        assert state[k].dtype == torch.float32 and torch.equal(state[k], on_disk[k].float())
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=2e-3, rtol=1e-3)


def test_further_tensor_files_and_written_files_share_the_checksums(tmp_path):
    model, ema = nets.MLP(2, 8, 1), nets.MLP(2, 8, 1)
    folder = store.save(tmp_path / "ckpt", model, {"step": 3}, tensors={"ema": ema},
                        write=lambda tmp: torch.save({"step": 3}, tmp / "state.pt"))
    sums = json.loads((folder / "checksums.json").read_text())
    assert sorted(sums) == ["config.json", "ema.safetensors", "model.safetensors", "state.pt"]
    state, config = store.load_state(folder, "ema")
    assert all(torch.equal(state[k], v) for k, v in ema.state_dict().items()) and config["record"] == {"step": 3}
    raw = bytearray((folder / "state.pt").read_bytes())
    raw[len(raw) // 2] ^= 1
    (folder / "state.pt").write_bytes(bytes(raw))
    with pytest.raises(store.StoreError, match=r"ckpt/state.pt does not match its checksum"):
        store.load(folder)                                           # every file is checked, not only the weights
    with pytest.raises(ValueError, match="must be a file name"):
        store.save(tmp_path / "x", model, tensors={"model": ema})
    with pytest.raises(TypeError, match=r"tensors\['ema'\] must be a torch.nn.Module or a dict of tensors"):
        store.save(tmp_path / "x", model, tensors={"ema": [1, 2]})
    with pytest.raises(TypeError, match="write must be a callable"):
        store.save(tmp_path / "x", model, write="state.pt")


# ------------------------------------------------------------------------------------------------ atomicity
def _stored(tmp_path, steps=1):
    torch.manual_seed(steps)
    model = nets.MLP(2, 8, 1)
    return model, store.save(tmp_path / "net", model, {"steps": steps})


def test_a_save_that_fails_midway_leaves_the_previous_version(tmp_path, monkeypatch):
    old, folder = _stored(tmp_path)
    real = store.save_file

    def written_then_full(state, path, **kw):
        real(state, path, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_file", written_then_full)
    with pytest.raises(OSError, match="disk full"):
        store.save(folder, nets.MLP(2, 8, 1), {"steps": 2})
    monkeypatch.undo()

    def half_written(tmp):
        (tmp / "extra.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.save(folder, nets.MLP(2, 8, 1), {"steps": 2}, write=half_written)
    calls = []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename refused")
        os.replace(src, dst)

    monkeypatch.setattr(store.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="rename refused"):                    # between the two renames: put back
        store.save(folder, nets.MLP(2, 8, 1), {"steps": 2})
    monkeypatch.undo()
    loaded, record = store.load(folder)
    assert record == {"steps": 1} and _same(loaded, old)
    assert [p.name for p in tmp_path.iterdir()] == ["net"]                  # no temporary folder left behind


def test_copies_left_by_a_killed_write_are_never_lost(tmp_path):
    old, folder = _stored(tmp_path, 1)
    # killed while writing: an incomplete temporary folder of a process that is gone; the folder is intact
    partial = tmp_path / ".net.tmp-999999999-dead0001"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    assert store.load(folder)[1] == {"steps": 1}
    # killed between the two renames: the old version aside, the new one complete in its temporary folder
    new, other = _stored(tmp_path / "b", 2)
    os.replace(folder, tmp_path / ".net.old-999999999-dead0002")
    shutil.copytree(other, tmp_path / ".net.tmp-999999999-dead0002")
    os.utime(tmp_path / ".net.tmp-999999999-dead0002", (2e9, 2e9))          # the newest copy
    with pytest.warns(RuntimeWarning, match="restored the complete copy .net.tmp-999999999-dead0002"):
        loaded, record = store.load(folder)
    assert record == {"steps": 2} and _same(loaded, new) and folder.is_dir()
    # only the aside copy left: it is restored rather than lost
    os.replace(folder, tmp_path / ".net.old-999999999-dead0003")
    shutil.rmtree(partial)
    with pytest.warns(RuntimeWarning, match="restored"):
        assert store.verify(folder)["record"] == {"steps": 2}
    # a later save supersedes the copies of writers that are gone, and removes them
    store.save(folder, old, {"steps": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "net"]
    # tidy settles a folder of them: a missing one comes back, the rest of the dead writers' copies go
    shutil.copytree(other, tmp_path / ".gone.old-999999999-dead0004")
    shutil.copytree(other, tmp_path / ".net.tmp-999999999-dead0005")
    (tmp_path / ".gone.tmp-999999999-dead0006").mkdir()
    live = tmp_path / f".net.tmp-{os.getpid()}-0000abcd"                     # a write in progress is left alone
    live.mkdir()
    with pytest.warns(RuntimeWarning, match="restored"):
        store.tidy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "b", "gone", "net"]
    assert store.load(tmp_path / "gone")[1] == {"steps": 2} and store.load(folder)[1] == {"steps": 3}
    with pytest.raises(FileNotFoundError, match="no stored network in"):
        store.load(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------- corruption
def _rewrite(folder: Path, name: str, data: bytes, *, resum: bool = False) -> None:
    (folder / name).write_bytes(data)
    if resum:   # as if the file were written like this: only the content check can tell
        sums = json.loads((folder / "checksums.json").read_text())
        sums[name] = store._sha256(folder / name)
        (folder / "checksums.json").write_text(json.dumps(sums))


@pytest.mark.parametrize("damage, match", [
    ("flip", r"net/model.safetensors does not match its checksum"),
    ("truncate", r"net/model.safetensors does not match its checksum"),
    ("delete", r"net/model.safetensors is missing"),
    ("config", r"net/config.json does not match its checksum"),
    ("config-json", r"net/config.json is not readable JSON"),
    ("format", r"net/config.json: unknown format 'lfm_core.network/99'"),
    ("checksums-json", r"net/checksums.json is not readable JSON"),
    ("checksums-delete", r"net/checksums.json is missing"),
    ("not-safetensors", r"net/model.safetensors cannot be read"),
])
def test_every_damage_is_an_error_naming_the_file(damage, match, tmp_path):
    _, folder = _stored(tmp_path)
    weights = (folder / "model.safetensors").read_bytes()
    config = (folder / "config.json").read_text()
    if damage == "flip":
        raw = bytearray(weights)
        raw[-5] ^= 0x01
        _rewrite(folder, "model.safetensors", bytes(raw))
    elif damage == "truncate":
        _rewrite(folder, "model.safetensors", weights[: len(weights) // 2])
    elif damage == "delete":
        (folder / "model.safetensors").unlink()
    elif damage == "config":
        _rewrite(folder, "config.json", config.replace('"steps": 1', '"steps": 2').encode())
    elif damage == "config-json":
        _rewrite(folder, "config.json", config[:-5].encode(), resum=True)
    elif damage == "format":
        _rewrite(folder, "config.json", config.replace(store.FORMAT, "lfm_core.network/99").encode(), resum=True)
    elif damage == "checksums-json":
        _rewrite(folder, "checksums.json", b"{not json")
    elif damage == "checksums-delete":
        (folder / "checksums.json").unlink()
    else:
        _rewrite(folder, "model.safetensors", b"\x00" * 64, resum=True)
    with pytest.raises(store.StoreError, match=match):
        store.load(folder)
    with pytest.raises(ValueError):                                          # a StoreError is a ValueError
        store.load_state(folder)


def test_a_wrong_model_or_bad_arguments_are_named(tmp_path):
    _, folder = _stored(tmp_path)
    with pytest.raises(store.StoreError, match=r"net/config.json holds class MLP; the model given is of class "
                                               "GlowInterpolant"):
        store.load(folder, interpolants.GlowInterpolant(2))
    with pytest.raises(store.StoreError, match=r"another configuration .*'hidden': \(8, 16\)"):
        store.load(folder, nets.MLP(2, 16, 1))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        store.load(folder, {"weight": torch.ones(1)})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        store.save(tmp_path / "x", nets.MLP(2).state_dict())
    for bad in (3, None, ["a"]):
        with pytest.raises(TypeError, match="folder must be a path"):
            store.save(bad, nets.MLP(2))
        with pytest.raises(TypeError, match="folder must be a path"):
            store.load(bad)
    with pytest.raises(TypeError, match="record must be a dict"):
        store.save(tmp_path / "x", nets.MLP(2), [1])
    with pytest.raises(TypeError, match="record must be JSON-serialisable"):
        store.save(tmp_path / "x", nets.MLP(2), {"t": torch.ones(1)})
    with pytest.raises(TypeError, match="half must be a bool"):
        store.save(tmp_path / "x", nets.MLP(2), half=1)
    with pytest.raises(ValueError, match="name must be the name of a tensor file"):
        store.load_state(folder, "../x")
    with pytest.raises(store.StoreError, match=r"net/ema.safetensors is not part of the stored network"):
        store.load_state(folder, "ema")
    assert not (tmp_path / "x").exists()


def test_classes_outside_the_registry_are_loaded_into_a_given_model_or_added_to_it(tmp_path):
    class Scale(torch.nn.Module):
        def __init__(self, dim: int):
            super().__init__()
            self.config = {"dim": dim}
            self.w = torch.nn.Parameter(torch.randn(dim))

    model = Scale(3)
    folder = store.save(tmp_path / "scale", model)
    with pytest.raises(store.StoreError, match=r"scale/config.json: cannot build its Scale .*class_name .*'Scale'"):
        store.load(folder)
    assert _same(store.load(folder, Scale(3))[0], model)
    store.CLASSES["Scale"] = Scale
    try:
        assert _same(store.load(folder)[0], model)
    finally:
        del store.CLASSES["Scale"]


# -------------------------------------------------------------------------------------------- the assets
def test_every_shipped_network_is_a_store_folder_that_verifies():
    folders = sorted(p.parent for p in store.ASSETS.rglob("checksums.json"))
    assert len(folders) >= 19
    for folder in folders:
        config = store.verify(folder)
        assert config["record"] and config["_class_name"] in store.CLASSES, folder
    leftovers = [p for p in store.ASSETS.rglob("*") if p.is_file() and p.parent not in folders]
    assert not leftovers, f"files outside a store folder in the assets: {leftovers}"


def test_the_assets_folder_is_defined_once():
    root = Path(store.__file__).resolve().parents[1]
    for path in [*root.glob("lfm_core/*.py"), *root.glob("scripts/*.py")]:
        if path.name != "store.py":
            assert not re.search(r"""["']assets["']""", path.read_text()), f"{path} names the assets folder itself"


def test_bad_arguments_are_refused_naming_them_before_any_work(tmp_path):
    """Issue 24: each bad argument is a ValueError / TypeError naming it (or a StoreError naming the file)."""
    net = nets.MLP(2, 8, 1)
    folder = store.save(tmp_path / "net", net)
    for fn in (store.load, store.verify, store.load_state, store.verify_files):
        with pytest.raises(ValueError, match="folder is an empty path"):
            fn("")
    for call in (lambda f: store.save(f, net), lambda f: store.write_folder(f, lambda tmp: None)):
        with pytest.raises(ValueError, match="folder is an empty path"):
            call("")
        with pytest.raises(TypeError, match="folder must be a path"):
            call(3)
        a_file = tmp_path / "a_file.txt"
        a_file.write_text("mine\n")
        with pytest.raises(ValueError, match="folder .*a_file.txt is a file: refusing to replace it"):
            call(a_file)
        assert a_file.read_text() == "mine\n"   # the user's file is left as it was
    with pytest.raises(ValueError, match="record must be JSON-serialisable"):
        store.save(tmp_path / "nan", net, {"a": float("nan")})
    with pytest.raises(ValueError, match="record must be JSON-serialisable"):
        store.save(tmp_path / "inf", net, {"a": [float("inf")]})
    with pytest.raises(TypeError, match="tensors must be a dict"):
        store.save(tmp_path / "t", net, tensors="t")
    assert not (tmp_path / "nan").exists() and not (tmp_path / "t").exists()
    with pytest.raises(store.StoreError, match="name 'nope': .*nope.safetensors is not part"):
        store.load_state(folder, "nope")
    for bad, kind in (("no-such", ValueError), ("", ValueError), (3, TypeError), (["a"], TypeError)):
        with pytest.raises(kind, match=r"class_name must be a known class \(.*MLP.*\), got"):
            store.build(bad, {"dim": 2})
    with pytest.raises(ValueError, match=r"config \{'dim': 0\} does not build a MLP: dim must be"):
        store.build("MLP", {"dim": 0})
    with pytest.raises(TypeError, match=r"config .* does not build a MLP: .*'nope'"):
        store.build("MLP", {"dim": 2, "nope": 1})
    with pytest.raises(TypeError, match="parent must be a path"):
        store.tidy(3)
    with pytest.raises(ValueError, match="parent is an empty path"):
        store.tidy("")
    with pytest.raises(TypeError, match="exc must be an exception and what a str, got str"):
        store.os_error("e", "writing x")
    with pytest.raises(TypeError, match="exc must be an exception and what a str, got OSError, int"):
        store.os_error(OSError(28, "No space"), 3)
    assert store.check_path("a/b", "x") == Path("a/b")
