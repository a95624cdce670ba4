"""The Trainer: checkpoints, exact resume, configuration checks on resume, the non-finite guard, corrupt files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_task import make_trainer

from lfm_core.training import (
    CheckpointError,
    NonFiniteError,
    Trainer,
    TrainerConfig,
    resolve_precision,
    save_image_grid,
)

HERE = Path(__file__).resolve().parent


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    for (k, x), y in zip(params(a).items(), params(b).values(), strict=True):
        assert torch.equal(x, y), k


def test_trains_keeps_an_ema_and_checkpoints(tmp_path):
    tr = make_trainer(steps=60, out_dir=tmp_path, checkpoint_every=25, lr=3e-2)
    res = tr.fit()
    assert sum(res.losses[-10:]) < sum(res.losses[:10])
    assert res.ema is tr.ema
    assert any(not torch.equal(a, b) for a, b in zip(tr.ema.state_dict().values(), tr.model.state_dict().values(),
                                                     strict=True))
    latest = (tmp_path / "latest").read_text().strip()
    assert latest == "ckpt-00000060"
    assert {p.name for p in (tmp_path / latest).iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt",
                                                                "config.json", "checksums.json"}
    cfg = json.loads((tmp_path / latest / "config.json").read_text())
    assert cfg["model"] == {"_class_name": "MLP", "dim": 2, "hidden": 16, "depth": 3, "activation": "selu"}
    assert cfg["training"]["lr"] == 3e-2 and cfg["step"] == 60
    assert len(list(tmp_path.glob("ckpt-*"))) == 2  # keep_checkpoints
    assert not list(tmp_path.glob(".tmp-*"))


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
    cfg = json.loads((tmp_path / "ckpt-00000006" / "config.json").read_text())
    assert cfg["training"]["lr"] == 0.05
    assert cfg["history"] == [{"step": 4, "changes": {"lr": [0.01, 0.05], "weight_decay": [0.0, 0.1]}}]


def test_cosine_schedule_makes_steps_part_of_the_configuration(tmp_path):
    make_trainer(steps=4, out_dir=tmp_path, lr_schedule="cosine").fit()
    with pytest.raises(ValueError, match="steps: 4 -> 8"):
        make_trainer(steps=8, out_dir=tmp_path, lr_schedule="cosine").fit()


def test_nan_loss_stops_before_anything_is_saved(tmp_path):
    with pytest.raises(NonFiniteError, match="step 0: the loss was nan"):
        make_trainer(steps=3, out_dir=tmp_path, loss_scale=float("nan")).fit()
    assert not list(tmp_path.glob("ckpt-*"))


def test_finite_loss_with_nan_gradient_keeps_latest_good(tmp_path):
    """The old failure: a finite loss whose gradient is NaN wrote NaN weights as latest, so every resume failed."""
    tr = make_trainer(steps=10, out_dir=tmp_path, checkpoint_every=2)
    inner = tr.loss_fn

    def poisoned(model, **batch):
        loss = inner(model, **batch)
        if tr.step >= 5:  # sqrt at 0 has an infinite slope: value 0, gradient inf * 0 = nan
            w = next(model.parameters())
            loss = loss + torch.sqrt((w - w.detach()).abs().sum())
        return loss

    tr.loss_fn = poisoned
    with pytest.raises(NonFiniteError, match=r"step 5: the gradient norm was nan .*ckpt-00000004"):
        tr.fit()
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000004"
    resumed = make_trainer(steps=10, out_dir=tmp_path, checkpoint_every=2)
    resumed.fit()
    assert resumed.step == 10 and all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_nonfinite_parameters_are_never_saved(tmp_path):
    tr = make_trainer(steps=2, out_dir=tmp_path)
    tr.fit()
    with torch.no_grad():
        next(tr.model.parameters())[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="checkpoint refused"):
        tr.save_checkpoint()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000002"]


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
    (tmp_path / ".tmp-latest-dead").write_text("ckpt-00000002\n")
    tr = make_trainer(steps=2, out_dir=tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    assert not tr.load_checkpoint()


@pytest.mark.parametrize("field, value, err", [
    ("steps", 0, ValueError), ("steps", 2.5, TypeError), ("batch_size", 0, ValueError),
    ("lr", -1e-3, ValueError), ("lr", float("nan"), ValueError), ("lr", "big", TypeError),
    ("weight_decay", -0.1, ValueError), ("lr_schedule", "linear", ValueError), ("warmup", -1, ValueError),
    ("ema_decay", 1.0, ValueError), ("ema_decay", -0.5, ValueError), ("grad_clip", -1.0, ValueError),
    ("grad_clip", 0.0, ValueError), ("precision", "fp8", ValueError), ("checkpoint_every", -1, ValueError),
    ("sample_every", -2, ValueError), ("keep_checkpoints", 0, ValueError), ("log_every", 0, ValueError),
    ("seed", -1, ValueError), ("seed", 1.5, TypeError),
])
def test_trainer_config_validates_every_field(field, value, err):
    """grad_clip=-1 did gradient ascent and checkpoint_every=-1 saved every step: now each is refused by name."""
    kwargs = {"steps": 10, "batch_size": 4, field: value}
    with pytest.raises(err, match=f"TrainerConfig.{field}"):
        TrainerConfig(**kwargs)


def test_trainer_bad_arguments():
    cfg = TrainerConfig(steps=1, batch_size=1)
    with pytest.raises(TypeError, match="model"):
        Trainer("mlp", lambda s, g: {}, lambda m: m, cfg)
    with pytest.raises(TypeError, match="config"):
        Trainer(torch.nn.Linear(1, 1), lambda s, g: {}, lambda m: m, {"steps": 1})
    with pytest.raises(TypeError, match="batch_fn"):
        Trainer(torch.nn.Linear(1, 1), None, lambda m: m, cfg)
    with pytest.raises(ValueError, match="trainable"):
        Trainer(torch.nn.Linear(1, 1).requires_grad_(False), lambda s, g: {}, lambda m: m, cfg)
    tr = make_trainer(steps=2, out_dir=None)
    tr.batch_fn = lambda step, g: {"x0": torch.zeros(3, 2), "x1": torch.zeros(3, 2), "t": torch.zeros(3)}
    with pytest.raises(ValueError, match="global batch"):
        tr.fit()
    tr = make_trainer(steps=2, out_dir=None)
    tr.loss_fn = lambda model, **b: torch.zeros(3)
    with pytest.raises(TypeError, match="scalar"):
        tr.fit()


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
    from lfm_core import training

    model = torch.nn.Linear(3, 3)
    batch_fn = lambda i: {"x": torch.randn(4, 3)}   # noqa: E731
    loss_fn = lambda m, x: m(x).pow(2).mean()       # noqa: E731
    r = training.measure_step(model, batch_fn, loss_fn, repeats=1, warmup=0, precision="auto")
    assert r["ms"] > 0 and r["peak_mb"] is None
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        training.measure_step(model, batch_fn, loss_fn, repeats=1, precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        training.measure_step(model, batch_fn, loss_fn, repeats=1, precision="half")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_one(tmp_path):
    """torchrun, 2 CPU processes (gloo): identical weights on both ranks, equal to one process (same global batch)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_ddp_worker.py"), str(tmp_path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.load(tmp_path / "meta0.pt")["world"] == 2
    single = make_trainer(steps=5, out_dir=None)
    single.fit(resume=False)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        torch.testing.assert_close(r0[k], single.model.state_dict()[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(torch.load(tmp_path / "meta0.pt")["losses"]),
                               torch.tensor(single.losses), rtol=1e-5, atol=1e-6)


def test_save_image_grid(tmp_path):
    from PIL import Image

    p = save_image_grid(torch.rand(5, 1, 8, 8) * 2 - 1, tmp_path / "g.png")
    assert Image.open(p).size == (3 * 10, 2 * 10)
    with pytest.raises(ValueError, match="1 or 3"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "x.png")
