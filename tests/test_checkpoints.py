"""Checkpoints: exact resume, configuration checks on resume, corrupt and partial folders, the atomic write."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from trainer_task import make_trainer

from lfm_core import checkpoints, store
from lfm_core.checkpoints import CheckpointError


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    for (k, x), y in zip(params(a).items(), params(b).values(), strict=True):
        assert torch.equal(x, y), k


def test_exact_resume_including_the_global_random_state(tmp_path):
    """Stopped at step 3 and resumed to 6: the same losses and weights as 6 steps in one go, although the loss also
    draws from torch's and numpy's global generators."""
    straight = make_trainer(steps=6, out_dir=tmp_path / "a", global_rng=True)
    straight.fit()
    first = make_trainer(steps=3, out_dir=tmp_path / "b", global_rng=True)
    first.fit()
    torch.manual_seed(123)  # disturb the global state between the two processes' worth of work
    resumed = make_trainer(steps=6, out_dir=tmp_path / "b", global_rng=True)
    resumed.fit()
    assert resumed.step == 6 and resumed.losses == straight.losses
    assert_same_weights(straight.model, resumed.model)
    assert_same_weights(straight.ema, resumed.ema)


def test_resume_refuses_other_settings_and_lists_them(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path).fit()
    with pytest.raises(ValueError, match=r"lr: 0\.01 -> 0\.05, weight_decay: 0\.0 -> 0\.1"):
        make_trainer(steps=8, out_dir=tmp_path, lr=0.05, weight_decay=0.1).fit()
    with pytest.raises(ValueError, match=r"warmup: 2 -> 5"):
        make_trainer(steps=8, out_dir=tmp_path, warmup=5).fit()
    with pytest.raises(ValueError, match="another model configuration"):
        make_trainer(steps=8, out_dir=tmp_path, hidden=32).fit()
    with pytest.raises(ValueError, match="at step 4, beyond steps = 2"):
        make_trainer(steps=2, out_dir=tmp_path).fit()
    # more steps with a constant schedule is a continuation, not a change
    longer = make_trainer(steps=6, out_dir=tmp_path)
    longer.fit()
    assert longer.step == 6


def test_override_applies_and_records_the_new_settings(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path).fit()
    tr = make_trainer(steps=6, out_dir=tmp_path, lr=0.05, weight_decay=0.1)
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append((self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]))
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        tr.fit(override=True)
    finally:
        torch.optim.AdamW.step = orig
    assert seen == [(0.05, 0.1), (0.05, 0.1)]  # the new values, not the checkpoint's
    cfg = json.loads((tmp_path / "ckpt-00000006" / "config.json").read_text())["record"]
    assert cfg["training"]["lr"] == 0.05
    assert cfg["history"] == [{"step": 4, "changes": {"lr": [0.01, 0.05], "weight_decay": [0.0, 0.1]}}]


def test_cosine_schedule_makes_steps_part_of_the_configuration(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path, lr_schedule="cosine").fit()
    with pytest.raises(ValueError, match="steps: 4 -> 8"):
        make_trainer(steps=8, out_dir=tmp_path, lr_schedule="cosine").fit()


def _corrupt(path: Path, how: str):
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "garble":
        raw = bytearray(path.read_bytes())
        for i in range(10, len(raw), 97):
            raw[i] ^= 0x5A
        path.write_bytes(bytes(raw))
    else:
        path.unlink()


@pytest.mark.parametrize("name, how", [("state.pt", "truncate"), ("state.pt", "garble"),
                                       ("model.safetensors", "garble"), ("checksums.json", "delete"),
                                       ("config.json", "truncate")])
def test_corrupt_checkpoint_falls_back_to_the_previous_good_one(tmp_path, name, how):
    make_trainer(steps=6, out_dir=tmp_path, checkpoint_every=3).fit()
    reference = make_trainer(steps=3, out_dir=None)
    reference.fit()
    newest = tmp_path / "ckpt-00000006"
    _corrupt(newest / name, how)
    tr = make_trainer(steps=6, out_dir=tmp_path, checkpoint_every=3)
    with pytest.warns(RuntimeWarning, match=r"corrupt checkpoint: .*ckpt-00000006.*falling back to .*ckpt-00000003"):
        assert tr.load_checkpoint()
    assert tr.step == 3 and tr.losses == reference.losses
    assert_same_weights(tr.model, reference.model)
    with pytest.raises(CheckpointError, match="ckpt-00000006"):
        tr.load_checkpoint(newest)


def test_no_usable_checkpoint_is_an_error_that_lists_them(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path, checkpoint_every=2).fit()
    for folder in tmp_path.glob("ckpt-*"):
        _corrupt(folder / "state.pt", "truncate")
    listing = "(?s)no usable checkpoint.*ckpt-00000002.*resume=False"
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match=listing):
        make_trainer(steps=4, out_dir=tmp_path).fit()
    fresh = make_trainer(steps=4, out_dir=tmp_path)
    fresh.fit(resume=False)
    assert fresh.step == 4


def test_partial_writes_are_cleaned_up(tmp_path):
    (tmp_path / ".tmp-ckpt-00000002-dead").mkdir(parents=True)
    (tmp_path / ".tmp-ckpt-00000002-dead" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".ckpt-00000002.tmp-999999999-dead0001").mkdir()             # a killed write of lfm_core.store
    (tmp_path / ".ckpt-00000002.tmp-999999999-dead0001" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-latest-dead").write_text("ckpt-00000002\n")
    tr = make_trainer(steps=2, out_dir=tmp_path)
    assert not list(tmp_path.glob(".*"))
    assert not tr.load_checkpoint()


def test_a_complete_checkpoint_left_beside_its_folder_by_a_kill_is_restored(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path, checkpoint_every=2).fit()
    # killed between checksums.json and the rename: the copy is complete, the folder is missing
    os.replace(tmp_path / "ckpt-00000004", tmp_path / ".ckpt-00000004.tmp-999999999-dead0002")
    with pytest.warns(RuntimeWarning, match="restored the complete copy"):
        tr = make_trainer(steps=4, out_dir=tmp_path, checkpoint_every=2)
    assert tr.load_checkpoint() and tr.step == 4 and not list(tmp_path.glob(".*"))
    model, record = store.load(tmp_path / "ckpt-00000004")                   # the model alone, from its config
    assert record["step"] == 4 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                          tr.model.state_dict().values(), strict=True))


def test_checkpoints_of_the_previous_layout_still_resume(tmp_path):
    """lfm_core.checkpoint/1: config.json held the record at its top level, with the model's config as "model"."""
    make_trainer(steps=2, out_dir=tmp_path).fit()
    folder = tmp_path / "ckpt-00000002"
    cfg = json.loads((folder / "config.json").read_text())
    old = {"format": checkpoints.FORMAT_1, **{k: v for k, v in cfg["record"].items() if k != "checkpoint"},
           "model": {"_class_name": cfg["_class_name"], **cfg["config"]}}
    (folder / "config.json").write_text(json.dumps(old))
    sums = json.loads((folder / "checksums.json").read_text())
    sums["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / "checksums.json").write_text(json.dumps(sums))
    tr = make_trainer(steps=4, out_dir=tmp_path)
    assert tr.load_checkpoint() and tr.step == 2


def test_write_folder_is_atomic_and_verified(tmp_path):
    def fill(folder):
        (folder / "a.txt").write_text("one")
        (folder / "b.bin").write_bytes(b"\x00\x01")

    final = store.write_folder(tmp_path / "ckpt-00000001", fill)
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.bin", "checksums.json"]
    checkpoints.verify_folder(final, ("a.txt",))
    store.write_folder(final, lambda folder: (folder / "a.txt").write_text("two"))  # replaces the folder
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "checksums.json"]
    assert not list(tmp_path.glob(".*"))                                       # no temporary or aside copy left
    with pytest.raises(CheckpointError, match="b.bin is not listed in .*checksums.json"):
        checkpoints.verify_folder(final, ("b.bin",))
    (final / "a.txt").write_text("changed")
    with pytest.raises(CheckpointError, match="a.txt does not match its checksum"):
        checkpoints.verify_folder(final)

    def failing(folder):
        (folder / "a.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write_folder(tmp_path / "ckpt-00000002", failing)
    assert not (tmp_path / "ckpt-00000002").exists() and not list(tmp_path.glob(".*"))


def test_model_config_and_parameter_signature():
    from lfm_core.nets import MLP

    assert checkpoints.model_config(MLP(2, hidden=8)) == {"_class_name": "MLP", "dim": 2, "hidden": 8, "depth": 3,
                                                          "activation": "selu"}
    assert checkpoints.model_config(torch.nn.Linear(2, 2)) == {"_class_name": "Linear"}
    assert (checkpoints.parameter_signature(torch.nn.Linear(2, 3))
            != checkpoints.parameter_signature(torch.nn.Linear(3, 2)))
    assert checkpoints.parameter_signature(torch.nn.Linear(2, 3)) == checkpoints.parameter_signature(
        torch.nn.Linear(2, 3))


def test_bad_arguments_are_refused_naming_them(tmp_path):
    """Issue 24: an empty path, a file, a wrong type, a negative step and a bad random state are refused, naming
    the argument; a missing out_dir still holds no checkpoints (nothing to clean, no newest)."""
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("mine\n")
    for fn in (checkpoints.clean_partial, checkpoints.newest):
        with pytest.raises(ValueError, match="out_dir is an empty path"):
            fn("")
        with pytest.raises(ValueError, match="out_dir .*a_file.txt is a file"):
            fn(a_file)
        with pytest.raises(TypeError, match="out_dir must be a path"):
            fn(3)
    assert a_file.read_text() == "mine\n"
    assert checkpoints.newest(tmp_path / "missing") is None and checkpoints.newest(None) is None
    checkpoints.clean_partial(tmp_path / "missing")
    for at_most in (-1, -5):
        with pytest.raises(ValueError, match="at_most must be a step >= 0"):
            checkpoints.newest(tmp_path, at_most=at_most)
    assert checkpoints.newest(tmp_path, at_most=0) is None
    with pytest.raises(TypeError, match="state must be what rng_state"):
        checkpoints.set_rng_state("s", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"state must be what rng_state.* got the keys \[\]"):
        checkpoints.set_rng_state({}, torch.device("cpu"))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        checkpoints.parameter_signature("mlp")
    for fn in (checkpoints.verify, checkpoints.verify_folder):
        with pytest.raises(ValueError, match="path is an empty path"):
            fn("")
    with pytest.raises(ValueError, match="path is (an )?empty"):
        make_trainer(steps=1, out_dir=tmp_path / "run").load_checkpoint("")


def test_after_failure_at_step_0_names_no_checkpoint(tmp_path):
    """A loss that failed at step 0 leaves no checkpoint before it (newest is not asked for step -1)."""
    text = checkpoints.after_failure(tmp_path, 0, met_loss=True)
    assert "No good checkpoint was written" in text
