"""The Trainer: the loop, the buffered non-finite guard, its configuration, several processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_task import make_trainer

from lfm_core.trainer import FitResult, NonFiniteError, Trainer, TrainerConfig

HERE = Path(__file__).resolve().parent


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
    cfg = json.loads((tmp_path / latest / "config.json").read_text())   # the model as a lfm_core.store folder
    assert cfg["_class_name"] == "MLP" and cfg["config"] == {"dim": 2, "hidden": 16, "depth": 3, "activation": "selu"}
    assert cfg["record"]["training"]["lr"] == 3e-2 and cfg["record"]["step"] == 60
    assert len(list(tmp_path.glob("ckpt-*"))) == 2  # keep_checkpoints
    assert not list(tmp_path.glob(".*"))


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


def test_the_guard_reads_back_in_batches_and_names_the_right_step(tmp_path):
    """Losses are read back every log_every steps and before a checkpoint (on the CPU too): a NaN at step 7 is
    found at step 10, before the checkpoint of step 10, and named as step 7; the checkpoint of step 5 is kept."""
    tr = make_trainer(steps=20, out_dir=tmp_path, checkpoint_every=5, log_every=50)
    inner = tr.loss_fn
    tr.loss_fn = lambda model, **b: inner(model, **b) * (float("nan") if tr.step == 7 else 1.0)
    with pytest.raises(NonFiniteError, match=r"step 7: the loss was nan.*ckpt-00000005"):
        tr.fit()
    assert tr.step == 10 and len(tr.losses) == 5
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-00000005"]


def test_losses_are_read_back_when_due(monkeypatch):
    seen = []
    orig = Trainer._read_back

    def spy(self):
        if self._pending:
            seen.append(self.step)
        return orig(self)

    monkeypatch.setattr(Trainer, "_read_back", spy)
    make_trainer(steps=10, out_dir=None, log_every=4).fit()
    assert seen == [4, 8, 10]
    seen.clear()
    every = make_trainer(steps=5, out_dir=None, log_every=4)
    every.callback = lambda step, loss: None
    every.fit()
    assert seen == [1, 2, 3, 4, 5]
    seen.clear()
    batched = make_trainer(steps=5, out_dir=None, log_every=50)
    batched.fit()
    assert batched.losses == every.losses  # when they are read back changes nothing


def test_an_error_after_a_nonfinite_step_reports_that_step():
    """A loss that raises on NaN weights (here a ValueError) must not hide the non-finite step that made them."""
    tr = make_trainer(steps=10, out_dir=None, log_every=50)
    inner = tr.loss_fn

    def loss_fn(model, **b):
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise ValueError("non-finite weights")
        return inner(model, **b) * (float("inf") if tr.step == 2 else 1.0)

    tr.loss_fn = loss_fn
    with pytest.raises(NonFiniteError, match="step 2: the loss was inf"):
        tr.fit()


def test_smoothed():
    assert FitResult(losses=[1.0, 3.0, 5.0]).smoothed(2) == [1.0, 2.0, 4.0]


def test_load_checkpoint_refuses_an_empty_path(tmp_path):
    tr = make_trainer(steps=2, out_dir=tmp_path)
    with pytest.raises(ValueError, match="path is empty"):
        tr.load_checkpoint("")
