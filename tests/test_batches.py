"""The batches of conditional flow matching (CFMBatches): couplings, prefetch, epochs, label dropout."""

import pytest
import torch

from lfm_core import guidance
from lfm_core.batches import CFMBatches
from lfm_core.nets import MLP
from lfm_core.paths import LinearPath
from lfm_core.trainer import Trainer, TrainerConfig
from lfm_core.training import train_cfm


def test_prefetch_does_not_change_the_run():
    src = lambda n, g: torch.randn(n, 2, generator=g)  # noqa: E731
    tgt = lambda n, g: torch.randn(n, 2, generator=g) + 3  # noqa: E731
    runs = []
    for prefetch in (0, 2):
        torch.manual_seed(0)
        res = train_cfm(MLP(2, hidden=16), LinearPath(0.1), src, tgt, steps=15, batch_size=64, coupling="ot",
                        coupling_kwargs={"block_size": 16}, prefetch=prefetch, progress=False)
        runs.append(res.losses)
    assert runs[0] == runs[1]


def test_cfm_batches_are_coupled_and_bad_prefetch_is_rejected():
    batches = CFMBatches(LinearPath(), [lambda n, g: torch.randn(n, 2, generator=g)],
                          [lambda n, g: torch.randn(n, 2, generator=g) + 5], 32, coupling="ot", coupling_kwargs=None,
                          prefetch=1, seed=0, paired=False, labels=None, label_dropout=0.0, null_label=None,
                          sampling="replacement")
    b = batches(0)
    again = batches(0)  # a jump back (as on resume) redraws the same batch
    batches.close()
    assert torch.equal(b["x0"], again["x0"]) and torch.equal(b["t"], again["t"])
    x0, x1 = b["x0"], b["x1"]
    indep = float((x0[torch.randperm(32)] - x1).pow(2).sum(1).mean())
    assert float((x0 - x1).pow(2).sum(1).mean()) < indep
    with pytest.raises(ValueError, match="prefetch"):
        train_cfm(MLP(2), LinearPath(), torch.zeros(4, 2), torch.zeros(4, 2), steps=1, prefetch=-1)
    with pytest.raises(ValueError, match="unknown coupling"):
        train_cfm(MLP(2), LinearPath(), torch.zeros(4, 2), torch.zeros(4, 2), steps=1, coupling="emd")


def test_epoch_sampling_visits_every_row_once_per_epoch():
    data = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 2)
    seen = []
    model = MLP(2, hidden=8)

    def spy(m, x0, x1, t, noise=None, labels=None):
        seen.append(x1[:, 0].long().tolist())
        return m(x1, t).pow(2).mean()

    batches = CFMBatches(LinearPath(), [lambda n, g: torch.randn(n, 2, generator=g)], [data], 16, seed=3,
                         sampling="epochs")
    Trainer(model, batches, spy, TrainerConfig(steps=4, batch_size=16, ema_decay=None), progress=False).fit()
    first, second = seen[0] + seen[1], seen[2] + seen[3]  # 40 rows, batch 16: 2 batches per epoch, 8 rows dropped
    assert len(set(first)) == 32 and len(set(second)) == 32 and first != second


def test_label_dropout_is_guidance_drop_labels_with_the_steps_generator(monkeypatch):
    """One label dropout for the project: CFMBatches calls guidance.drop_labels, drawing from the step's generator
    after the step's points, times and noise (as before it called drop_labels, so runs did not change)."""
    calls = []
    orig = guidance.drop_labels

    def spy(labels, null_label, p=0.1, *, generator=None):
        calls.append((labels.clone(), null_label, p))
        return orig(labels, null_label, p, generator=generator)

    monkeypatch.setattr(guidance, "drop_labels", spy)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(64) % 3

    def batches(p, coupling="independent"):
        return CFMBatches(LinearPath(0.1), [lambda n, g: torch.randn(n, 2, generator=g)], [data], 200, seed=1,
                          labels=[labels], label_dropout=p, null_label=3, coupling=coupling)

    b = batches(0.3)(5)
    (kept, null, p), = calls
    assert null == 3 and p == 0.3
    dropped = b["labels"] == 3
    assert torch.equal(b["labels"][~dropped], kept[~dropped]) and 30 < int(dropped.sum()) < 90
    # the draw: torch.rand(n) < p from the step's generator, after its points (indices), times and noise
    from lfm_core.batches import _mix

    g = torch.Generator().manual_seed(_mix(1, 5))
    torch.randn(200, 2, generator=g)
    torch.randint(0, 64, (200,), generator=g)
    LinearPath(0.1).sample_time(200, generator=g)
    torch.randn(200, 2, generator=g)
    assert torch.equal(dropped, torch.rand(200, generator=g) < 0.3)
    assert torch.equal(batches(0.3)(5)["labels"], b["labels"])  # a pure function of (seed, step)
    calls.clear()
    assert not (batches(0.0)(0)["labels"] == 3).any() and not calls  # no dropout: no draw
    assert (batches(1.0, "ot")(0)["labels"] == 3).all()


def test_labels_outside_the_classes_are_refused():
    class Cond(torch.nn.Module):
        null_label = 3

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t, labels=None):
            return self.lin(x)

    data = torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        train_cfm(Cond(), LinearPath(), torch.randn(8, 2), data, labels=torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]),
                  steps=1, batch_size=4, progress=False)


@pytest.mark.parametrize("kw, exc, name", [
    ({"path": "linear"}, TypeError, "path"),
    ({"batch_size": "3"}, TypeError, "batch_size"), ({"batch_size": 2.5}, TypeError, "batch_size"),
    ({"batch_size": True}, TypeError, "batch_size"), ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": -5}, ValueError, "batch_size"),
    ({"coupling": 3}, TypeError, "coupling"), ({"coupling": ["a"]}, TypeError, "coupling"),
    ({"coupling": "no-such"}, ValueError, "coupling"),
    ({"coupling_kwargs": {"nope": 1}}, ValueError, "coupling_kwargs"),
    ({"prefetch": "3"}, TypeError, "prefetch"), ({"prefetch": 2.5}, TypeError, "prefetch"),
    ({"prefetch": -1}, ValueError, "prefetch"), ({"prefetch": True}, TypeError, "prefetch"),
    ({"prefetch": float("nan")}, TypeError, "prefetch"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": 2**70}, ValueError, "seed"), ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": "3"}, TypeError, "seed"), ({"seed": True}, TypeError, "seed"),
    ({"seed": float("nan")}, TypeError, "seed"),
    ({"paired": "yes"}, TypeError, "paired"), ({"paired": 2}, TypeError, "paired"),
    ({"paired": 1.0}, TypeError, "paired"),
    ({"sampling": "no-such"}, ValueError, "sampling"), ({"sampling": ""}, ValueError, "sampling"),
    ({"sampling": 3}, ValueError, "sampling"), ({"sampling": ["a"]}, ValueError, "sampling"),
    ({"label_dropout": "0.5"}, TypeError, "label_dropout"), ({"label_dropout": -1.0}, ValueError, "label_dropout"),
    ({"label_dropout": float("nan")}, ValueError, "label_dropout"),
    ({"label_dropout": True}, TypeError, "label_dropout"), ({"label_dropout": 0.5j}, TypeError, "label_dropout"),
    ({"label_dropout": 2.0}, ValueError, "label_dropout"),
    ({"sources": []}, ValueError, "sources"), ({"sources": "abc"}, TypeError, "sources"),
    ({"sources": [torch.full((16, 2), float("nan"))]}, ValueError, "sources"),
    ({"sources": [torch.zeros(16, 3)]}, ValueError, "sources"),
    ({"sources": [torch.zeros(16, 2), torch.zeros(16, 2)]}, ValueError, "sources and targets"),
    ({"paired": True, "targets": [torch.zeros(12, 2)]}, ValueError, "paired"),
])
def test_cfm_batches_refuse_bad_arguments_naming_them(kw, exc, name):
    args = dict(path=LinearPath(), sources=[torch.zeros(16, 2)], targets=[torch.ones(16, 2)], batch_size=4)
    args.update(kw)
    with pytest.raises(exc, match=name):
        CFMBatches(**args)


def test_cfm_batches_valid_arguments_still_draw():
    b = CFMBatches(LinearPath(), [torch.zeros(16, 2)], [torch.ones(16, 2)], 4, coupling="sinkhorn",
                   coupling_kwargs={"reg": 0.1, "block_size": 4}, prefetch=1, seed=2**63, paired=False)
    try:
        assert b(0)["x0"].shape == (4, 2)
    finally:
        b.close()
