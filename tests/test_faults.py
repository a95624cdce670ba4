"""Faults that must lose or misreport no work: a kill at every point of a checkpoint's save, divergence, a bad batch,
output folders that cannot be written, disk full, file modes, and the process's random generators on load."""

import errno
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_task import make_trainer

from lfm_core import checkpoints, store
from lfm_core.trainer import FitResult, NonFiniteError, TrainerConfig


def weights(model):
    return [v.detach().clone() for v in model.state_dict().values()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


# ------------------------------------------------------------------------- a kill at each point of a save
class Killed(BaseException):
    """The process died here: nothing after it reaches the disk."""


DESTRUCTIVE = [(os, "replace"), (os, "rename"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "mkdir"),
               (os, "chmod"), (shutil, "rmtree")]


def die_at(monkeypatch, n: int) -> list:
    """From the ``n``-th call of an operation that changes the disk on, every such call raises :class:`Killed`."""
    calls = []

    def wrap(fn, name):
        def wrapped(*args, **kwargs):
            calls.append((name, args[:1]))
            if len(calls) >= n:
                raise Killed(f"killed at call {n}: {name}{args[:2]}")
            return fn(*args, **kwargs)
        return wrapped

    for module, name in DESTRUCTIVE:
        monkeypatch.setattr(module, name, wrap(getattr(module, name), name))
    return calls


def complete_steps(out_dir: Path) -> set:
    """The steps of every complete checkpoint on disk, under its own name or a temporary one."""
    found = set()
    for p in out_dir.iterdir():
        m = re.search(r"ckpt-(\d{8})", p.name)
        if m and p.is_dir() and not p.name.startswith(("diverged", ".tmp-pruned")):
            try:
                store.verify_files(p, checkpoints.REQUIRED)
            except (store.StoreError, OSError):
                continue
            found.add(int(m.group(1)))
    return found


def restart(out_dir: Path, steps: int, monkeypatch):
    """A new process: the killed writer is gone (its pid no longer alive), the trainer settles the folder."""
    monkeypatch.setattr(store, "process_alive", lambda pid: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning but a restored copy (a corrupt checkpoint) fails
        warnings.filterwarnings("ignore", ".*restored the complete copy", RuntimeWarning)
        tr = make_trainer(steps, out_dir, checkpoint_every=2)
        found = tr.load_checkpoint()
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")], sorted(os.listdir(out_dir))
    return tr, found


@pytest.mark.parametrize("scenario", ["continue", "save-again"])
def test_a_kill_at_each_point_of_a_save_resumes_the_latest_complete_checkpoint(tmp_path, monkeypatch, scenario):
    """Train 4 steps (checkpoints 2 and 4), then save again, killed at the 1st, 2nd ... operation that changes the
    disk, until the save completes. "continue": train on to step 6 (a new checkpoint, the oldest pruned);
    "save-again": start again from step 0 into the same folder (checkpoints 2 and 4 replaced: the old folder moved
    aside, the new renamed in). Each time, a restart resumes the newest complete checkpoint, never step 0."""
    base = tmp_path / "base"
    make_trainer(4, base, checkpoint_every=2).fit()
    straight = make_trainer(6, None)
    straight.fit()
    target, resume = (6, True) if scenario == "continue" else (4, False)
    points = 0
    for n in range(1, 200):
        out = tmp_path / f"kill-{n}"
        shutil.copytree(base, out)
        tr = make_trainer(target, out, checkpoint_every=2)
        with monkeypatch.context() as m:
            calls = die_at(m, n)
            try:
                tr.fit(resume=resume)
            except Killed:
                killed = True
            else:
                killed = False
        if not killed:
            break
        points += 1
        on_disk = complete_steps(out)
        assert max(on_disk) >= 4, (n, calls[n - 1], sorted(os.listdir(out)))  # nothing complete was ever removed
        with monkeypatch.context() as m:
            again, found = restart(out, 6, m)
        assert found and again.step == max(on_disk), (n, calls[n - 1], again.step, on_disk)
        print(f"{scenario}: killed at {calls[n - 1][0]} {Path(calls[n - 1][1][0]).name}: resumed step {again.step}")
        again.fit()
        assert again.step == 6 and same(again.model, straight.model), (n, calls[n - 1])
    assert points >= 6, points  # the save sequence has that many points to be killed at
    assert not killed


def test_fit_on_a_finished_run_writes_nothing(tmp_path, monkeypatch):
    make_trainer(5, tmp_path, checkpoint_every=2).fit()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    def no_write(*a, **k):
        raise AssertionError("the unchanged last step was saved again")

    monkeypatch.setattr(store, "write_folder", no_write)
    again = make_trainer(5, tmp_path, checkpoint_every=2)
    again.fit()
    assert again.step == 5 and {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_a_damaged_folder_with_a_complete_copy_beside_it_gets_the_copy(tmp_path):
    make_trainer(4, tmp_path, checkpoint_every=2).fit()
    shutil.copytree(tmp_path / "ckpt-00000004", tmp_path / ".ckpt-00000004.tmp-999999999-dead0001")
    (tmp_path / "ckpt-00000004" / "state.pt").write_bytes(b"damaged")
    # a complete temporary copy under the checkpoint/1 name, of a missing checkpoint, is restored too
    os.replace(tmp_path / "ckpt-00000002", tmp_path / ".tmp-ckpt-00000002-dead")
    with pytest.warns(RuntimeWarning, match="restored the complete copy") as seen:
        tr = make_trainer(4, tmp_path)
    assert len(seen) == 2 and tr.load_checkpoint() and tr.step == 4
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000002", "ckpt-00000004", "latest"]
    assert checkpoints.verify(tmp_path / "ckpt-00000002")["step"] == 2


# ------------------------------------------------------------------------------------ divergence, bad batches
def rms(model):
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float(flat.pow(2).mean().sqrt())


def advice_lr(err) -> bool:
    return "lower the learning rate (a TrainerConfig with a smaller lr, then fit(override=True))" in str(err)


def advice_skip(err) -> tuple:
    found = re.search(r"TrainerConfig\(skip_steps=\((\d+),\)\)", str(err))
    assert found, str(err)
    return (int(found.group(1)),)


def test_a_huge_learning_rate_stops_at_once_and_lowering_it_works(tmp_path):
    """lr = 1e4 blows the weights up in one update: stopped at step 0, nothing saved; the advice works."""
    with pytest.raises(NonFiniteError, match=r"step 0: its update took the parameters' root mean square") as err:
        make_trainer(4, tmp_path, checkpoint_every=1, lr=1e4).fit()
    assert err.value.step == 0 and not list(tmp_path.glob("ckpt-*"))
    assert "No good checkpoint was written" in str(err.value) and advice_lr(err.value)
    tr = make_trainer(4, tmp_path, checkpoint_every=1, lr=1e-2)
    tr.fit(override=True)
    assert tr.step == 4 and all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_divergence_after_good_steps_points_at_a_finite_checkpoint_and_lowering_lr_resumes_from_it(tmp_path):
    make_trainer(4, tmp_path, checkpoint_every=2).fit()
    with pytest.raises(NonFiniteError, match=r"step 4: its update took .* The last good checkpoint is "
                                             r".*ckpt-00000004\b") as err:
        make_trainer(8, tmp_path, checkpoint_every=1, lr=1e4).fit(override=True)
    good = make_trainer(8, tmp_path)
    assert good.load_checkpoint() and good.step == 4 and rms(good.model) < 10
    assert all(torch.isfinite(p).all() for p in good.model.parameters())
    assert advice_lr(err.value)
    tr = make_trainer(8, tmp_path, checkpoint_every=1, lr=5e-3)
    tr.fit(override=True)
    assert tr.step == 8 and rms(tr.model) < 10


def bad_batch(tr, at: int, how):
    inner = tr.batch_fn

    def batch_fn(step, g):
        batch = inner(step, g)
        if step == at:
            batch["x1"] = how(batch["x1"])
        return batch

    tr.batch_fn = batch_fn
    return tr


def test_a_loss_spike_stops_names_the_batch_sets_its_checkpoint_aside_and_skipping_it_works(tmp_path):
    """Batch 25 has targets 1e4 times too large: its loss is far above the run's median. Checkpoint 25 (whose
    weights met that loss) is set aside, checkpoint 20 is the last good one, and skipping the batch gets past it."""
    tr = bad_batch(make_trainer(40, tmp_path, checkpoint_every=5), 25, lambda x: x * 1e4)
    with pytest.raises(NonFiniteError, match=r"step 25: the loss diverged: .* over 1000 x the median") as err:
        tr.fit()
    msg = str(err.value)
    assert "ckpt-00000020" in msg and "diverged-ckpt-00000025 holds the weights" in msg
    assert sorted(p.name for p in tmp_path.glob("*ckpt-*")) == ["ckpt-00000020", "diverged-ckpt-00000025"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000020"
    # the batch is identified: replaying batch_fn from the recorded generator state gives the bad batch again
    g = torch.Generator().set_state(err.value.generator_state)
    assert err.value.step == 25 and tr.batch_fn(25, g)["x1"].abs().max() > 1e3
    again = bad_batch(make_trainer(40, tmp_path, checkpoint_every=5, skip_steps=advice_skip(err.value)), 25,
                      lambda x: x * 1e4)
    res = again.fit()
    assert again.step == 40 and math_isnan(res.losses[25]) and all(v == v for v in res.losses[:25] + res.losses[26:])
    assert all(v == v for v in res.smoothed(10))


def math_isnan(v):
    return v != v


def test_nan_in_the_data_names_the_step_and_skipping_the_batch_works(tmp_path):
    def poison(x):
        x = x.clone()
        x[0, 0] = float("nan")
        return x

    tr = bad_batch(make_trainer(12, tmp_path, checkpoint_every=4), 7, poison)
    with pytest.raises((ValueError, NonFiniteError), match=r"step 7\b") as err:
        tr.fit()
    assert "skip_steps=(7,)" in str(err.value)
    skip = advice_skip(err.value)
    again = bad_batch(make_trainer(12, tmp_path, checkpoint_every=4, skip_steps=skip), 7, poison)
    again.fit()
    assert again.step == 12 and math_isnan(again.losses[7])
    # the skipped step still draws its batch: the later batches are those of a run that never stopped
    straight = make_trainer(12, None, skip_steps=skip)
    straight.fit()
    assert same(again.model, straight.model) and again.losses[8:] == straight.losses[8:]


def test_an_error_in_batch_fn_names_its_step():
    tr = make_trainer(6, None)
    inner = tr.batch_fn

    def batch_fn(step, g):
        if step == 3:
            raise RuntimeError("the image file 17.png is truncated")
        return inner(step, g)

    tr.batch_fn = batch_fn
    with pytest.raises(RuntimeError, match=r"step 3 .*skip_steps=\(3,\).*17.png is truncated"):
        tr.fit()


def test_the_divergence_guard_can_be_turned_off_and_is_validated(tmp_path):
    tr = bad_batch(make_trainer(30, None, divergence=None), 25, lambda x: x * 1e4)
    assert tr.fit().losses[25] > 1e6
    for value, err in ((1.0, ValueError), (0.5, ValueError), (float("nan"), ValueError), ("big", TypeError)):
        with pytest.raises(err, match="TrainerConfig.divergence"):
            TrainerConfig(steps=1, batch_size=1, divergence=value)
    for value, err in (("3", TypeError), (3, TypeError), ([-1], ValueError), ([1.5], TypeError), (None, TypeError)):
        with pytest.raises(err, match="TrainerConfig.skip_steps"):
            TrainerConfig(steps=1, batch_size=1, skip_steps=value)
    assert TrainerConfig(steps=1, batch_size=1, skip_steps=[5, 2, 5]).skip_steps == (2, 5)
    with pytest.raises(ValueError, match="TrainerConfig.seed"):
        TrainerConfig(steps=1, batch_size=1, seed=2**70)
    assert FitResult(losses=[1.0, float("nan"), 3.0]).smoothed(2) == [1.0, 1.0, 3.0]


def test_a_long_healthy_run_is_never_stopped():
    """300 steps of a noisy loss (batch 8) with warmup and a large learning rate: no false alarm."""
    tr = make_trainer(300, None, lr=3e-2, log_every=7)
    assert len(tr.fit().losses) == 300


# ------------------------------------------------------------------------------------ the global generators
def global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()  # noqa: NPY002


def test_loading_a_checkpoint_leaves_the_global_generators_alone(tmp_path):
    make_trainer(3, tmp_path, global_rng=True).fit()
    tr = make_trainer(6, tmp_path, global_rng=True)
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002
    torch.manual_seed(5)
    before = global_states()
    assert tr.load_checkpoint() and tr.step == 3
    after = global_states()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    # the run's own generator is restored, and training on sets the run's global states (an exact resume)
    straight = make_trainer(6, None, global_rng=True)
    straight.fit()
    tr.fit()
    assert tr.losses == straight.losses and same(tr.model, straight.model)


# ------------------------------------------------------------------------------------ output folders, files
def test_an_out_dir_that_cannot_be_written_fails_before_step_1(tmp_path, monkeypatch):
    drawn = []
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out_dir, match in ((a_file, "out_dir .*file is not a folder"),
                           (a_file / "sub", "out_dir .*sub cannot be created: .*file is not a folder"),
                           ("", "out_dir is an empty path")):
        with pytest.raises(ValueError, match=match):
            tr = make_trainer(3, out_dir)
            tr.batch_fn = lambda step, g: drawn.append(step)
            tr.fit()
    real_open = os.open

    def refused(path, *a, **k):
        if Path(path).parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(ValueError, match=r"out_dir .*ro cannot be written to: Permission denied"):
        make_trainer(3, tmp_path / "ro")
    with pytest.raises(ValueError, match=r"out_dir .*ro/new cannot be written to \(its nearest existing folder"):
        make_trainer(3, tmp_path / "ro" / "new")
    assert not drawn


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into any folder")
def test_a_read_only_out_dir_fails_at_once(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot be written to"):
            make_trainer(3, ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_store_and_cache_files_have_the_mode_of_new_files(tmp_path, umask, mode):
    from cache_task import autoencoder_and_data

    from lfm_core import latent_cache

    old = os.umask(umask)
    try:
        make_trainer(2, tmp_path / "run").fit()
        ae, data = autoencoder_and_data()
        latent_cache.cached_latents(ae, data, tmp_path / "cache")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()] + list((tmp_path / "cache").iterdir())
    assert len(files) >= 7 and {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: oct(mode) for p in files}


def test_disk_full_and_permission_errors_name_the_path_and_keep_the_previous_checkpoint(tmp_path, monkeypatch):
    tr = make_trainer(2, tmp_path, checkpoint_every=1)
    tr.fit()
    tr.config = TrainerConfig(**{**tr.config.to_dict(), "steps": 3})
    real = store.save_file
    for code, kind in ((errno.ENOSPC, OSError), (errno.EACCES, PermissionError)):
        def full(state, path, _code=code, **kw):
            real(state, path, **kw)
            raise OSError(_code, os.strerror(_code))

        monkeypatch.setattr(store, "save_file", full)
        with pytest.raises(kind, match=rf"writing {re.escape(str(tmp_path))}/ckpt-00000003 .*failed: "
                                       rf"{os.strerror(code)}") as err:
            tr.fit()
        assert err.value.errno == code
        assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001", "ckpt-00000002", "latest"]
        monkeypatch.undo()
    # torch.save of the optimiser state failing the same way
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(OSError, match=r"ckpt-00000003 .*failed: No space"):
        tr.save_checkpoint()
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001", "ckpt-00000002", "latest"]


def test_safetensors_own_disk_errors_name_the_path(tmp_path):
    """safetensors reports a failed write as a SafetensorError '... (os error N)': it comes out as an OSError."""
    err = store.os_error(Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
                         "writing /runs/a/ckpt-00000003")
    assert err.errno == errno.ENOSPC and "writing /runs/a/ckpt-00000003 failed: No space left on device" in str(err)
    assert store.os_error(ValueError("bad name"), "writing") is None


def test_the_latent_cache_checks_its_folder_first_and_names_the_path_of_a_failed_write(tmp_path, monkeypatch):
    import safetensors.torch
    from cache_task import autoencoder_and_data

    from lfm_core import latent_cache

    ae, data = autoencoder_and_data()
    encoded = []
    monkeypatch.setattr(ae, "encode", lambda *a, **k: encoded.append(1) or torch.zeros(len(a[0]), 4, 2, 2))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="cache_dir .*file is not a folder"):
        latent_cache.cached_latents(ae, data, a_file)
    with pytest.raises(TypeError, match="cache_dir"):
        latent_cache.cached_latents(ae, data, 3)
    assert not encoded
    real = safetensors.torch.save_file

    def full(tensors, path, **kw):
        real(tensors, path, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match=r"writing the latent cache entry .*cache/latents-.*failed: No space left") as e:
        latent_cache.cached_latents(ae, data, tmp_path / "cache")
    assert e.value.errno == errno.ENOSPC and os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    # an entry this user cannot read is an error that says so, not a "corrupt" entry encoded again
    entry = tmp_path / "c2"
    latent_cache.cached_latents(ae, data, entry)
    def unreadable(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(safetensors, "safe_open", unreadable)
    with pytest.raises(PermissionError, match=r"reading the latent cache entry .*c2/latents-.* failed"):
        latent_cache.cached_latents(ae, data, entry)
    monkeypatch.undo()
    (entry / ".tmp-writable-999999999-0000dead").write_text("")  # a probe of a process killed while checking
    latent_cache.cached_latents(ae, data, entry)
    assert not list(entry.glob(".tmp-*"))


def test_checkpoint_errors_stay_json_free_of_skips(tmp_path):
    """skip_steps and divergence are bookkeeping: a resume with other values needs no override."""
    make_trainer(4, tmp_path).fit()
    tr = make_trainer(6, tmp_path, skip_steps=(5,), divergence=None)
    tr.fit()
    record = json.loads((tmp_path / "ckpt-00000006" / "config.json").read_text())["record"]
    assert record["training"]["skip_steps"] == [5] and tr.history == []


REAL_LIMIT = """
import errno, json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from trainer_task import make_trainer
from cache_task import autoencoder_and_data
from lfm_core import latent_cache
out = Path(sys.argv[1])
tr = make_trainer(2, out / "run")
ae, data = autoencoder_and_data()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))   # every file above 1500 bytes: EFBIG
found = {}
for name, call in (("checkpoint", tr.fit), ("cache", lambda: latent_cache.cached_latents(ae, data, out / "cache"))):
    try:
        call()
    except OSError as err:
        found[name] = [err.errno, str(err)]
print(json.dumps(found))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(__import__("signal"), "SIGXFSZ"), reason="POSIX only")
def test_a_real_write_error_names_the_path(tmp_path):
    """A real failed write (a file size limit: EFBIG, as disk full gives ENOSPC), through safetensors and
    torch.save, in a process of its own: an OSError naming the operation and the path, nothing partial left."""
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", REAL_LIMIT, str(tmp_path), str(here)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["checkpoint"][0] == errno.EFBIG and re.search(r"writing .*run/ckpt-00000002 .*failed: File too "
                                                               r"large", found["checkpoint"][1]), found
    assert found["cache"][0] == errno.EFBIG and "writing the latent cache entry" in found["cache"][1], found
    assert sorted(os.listdir(tmp_path / "run")) == [] and os.listdir(tmp_path / "cache") == []
