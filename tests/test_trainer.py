import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_task import make_trainer

from lfm_core.training import Trainer, TrainerConfig, save_image_grid

HERE = Path(__file__).resolve().parent


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_trains_keeps_an_ema_and_checkpoints(tmp_path):
    tr = make_trainer(steps=60, out_dir=tmp_path, checkpoint_every=25, lr=3e-2)
    res = tr.fit()
    assert sum(res.losses[-10:]) < sum(res.losses[:10])
    assert any(not torch.equal(a, b) for a, b in zip(tr.ema.state_dict().values(), tr.model.state_dict().values(),
                                                     strict=True))
    latest = (tmp_path / "latest").read_text().strip()
    assert latest == "ckpt-00000060"
    assert {p.name for p in (tmp_path / latest).iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt"}
    assert len(list(tmp_path.glob("ckpt-*"))) <= 2  # keep_checkpoints


def test_exact_resume(tmp_path):
    straight = make_trainer(steps=6, out_dir=tmp_path / "a")
    straight.fit()
    first = make_trainer(steps=3, out_dir=tmp_path / "b")
    first.fit()
    resumed = make_trainer(steps=6, out_dir=tmp_path / "b")
    resumed.fit()
    assert resumed.step == 6 and resumed.losses == straight.losses
    for (k, a), b in zip(params(straight.model).items(), params(resumed.model).values(), strict=True):
        assert torch.equal(a, b), k
    for a, b in zip(params(straight.ema).values(), params(resumed.ema).values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    make_trainer(steps=2, out_dir=tmp_path).fit()
    with pytest.raises(ValueError, match="another model configuration"):
        make_trainer(steps=4, out_dir=tmp_path, hidden=32).fit()


def test_nan_guard_and_bad_batches(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite at step 0"):
        make_trainer(steps=3, out_dir=None, loss_scale=float("nan")).fit()
    tr = make_trainer(steps=2, out_dir=None)
    tr.batch_fn = lambda step, g: {"x0": torch.zeros(3, 2), "x1": torch.zeros(3, 2), "t": torch.zeros(3)}
    with pytest.raises(ValueError, match="global batch"):
        tr.fit()
    with pytest.raises(ValueError, match="ema_decay"):
        Trainer(torch.nn.Linear(1, 1), None, None, TrainerConfig(steps=1, batch_size=1, ema_decay=1.0))


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
    with pytest.raises(ValueError, match="1 or 3 channels"):
        save_image_grid(torch.zeros(2, 2, 4, 4), tmp_path / "x.png")
