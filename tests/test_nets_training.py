import math

import pytest
import torch

from lfm_core import runtime
from lfm_core.metrics import wasserstein2
from lfm_core.mixtures import GaussianMixture
from lfm_core.nets import MLP, MLPEnsemble
from lfm_core.paths import LinearPath
from lfm_core.solvers import integrate
from lfm_core.training import cfm_loss, fit, reflow_pairs, train_cfm


def test_mlp_shapes_and_structure():
    m = MLP(3, hidden=16, depth=2)
    assert m(torch.randn(5, 3), torch.rand(5)).shape == (5, 3)
    assert m(torch.randn(5, 3), 0.5).shape == (5, 3)
    linears = [layer for layer in m.net if isinstance(layer, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(4, 16), (16, 16), (16, 3)]
    assert isinstance(MLP(2).net[1], torch.nn.SELU)


def test_mlp_depends_on_time():
    m = MLP(2)
    x = torch.randn(4, 2)
    assert not torch.allclose(m(x, 0.0), m(x, 1.0))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(dim=0), ValueError, "dim must be >= 1"),
        (dict(dim=2, hidden=0), ValueError, "hidden"),
        (dict(dim=2, depth=-1), ValueError, "depth"),
        (dict(dim=2, activation="swish2"), ValueError, "unknown activation"),
        (dict(dim=2.0), TypeError, "dim must be an int"),
    ],
)
def test_mlp_bad_config(kwargs, err, match):
    with pytest.raises(err, match=match):
        MLP(**kwargs)


def test_mlp_bad_input():
    m = MLP(2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2\]"):
        m(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="t must have shape"):
        m(torch.randn(4, 2), torch.rand(3))


def test_cfm_loss_matches_its_definition(gen):
    model, path = MLP(2), LinearPath(0.1)
    x0, x1 = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    t, noise = torch.rand(32, generator=gen), torch.randn(32, 2, generator=gen)
    xt = (1 - t[:, None]) * x0 + t[:, None] * x1 + 0.1 * noise
    expected = (model(xt, t) - (x1 - x0)).pow(2).mean()  # the mean over every element: one scaling everywhere
    torch.testing.assert_close(cfm_loss(model, path, x0, x1, t=t, noise=noise), expected)


def test_train_cfm_reaches_the_loss_floor_and_is_reproducible():
    """The CFM loss of the exact marginal velocity is its floor (> 0): training must get close to it."""
    target = GaussianMixture(torch.tensor([[4.0, -2.0]]), 0.5)
    src = lambda n, g: torch.randn(n, 2, generator=g)  # noqa: E731
    tgt = lambda n, g: target.sample(n, generator=g)  # noqa: E731
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLP(2, hidden=32)
        res = train_cfm(model, LinearPath(), src, tgt, steps=1200, batch_size=256, lr=2e-3, seed=5, progress=False)
        runs.append((model, res))
    assert runs[0][1].losses == runs[1][1].losses  # same seed, same run
    g = torch.Generator().manual_seed(2)
    x0, x1 = src(20_000, g), tgt(20_000, g)
    exact = target.velocity(LinearPath())
    with torch.no_grad():  # same t draws for both (same seed)
        floor = float(cfm_loss(exact, LinearPath(), x0, x1, generator=torch.Generator().manual_seed(3)))
        learned = float(cfm_loss(runs[0][0], LinearPath(), x0, x1, generator=torch.Generator().manual_seed(3)))
    assert floor > 0.5  # independent pairs: the conditional velocity is not a function of x_t
    assert runs[0][1].losses[0] > 3 * floor  # the untrained model is far from it
    assert learned < 1.1 * floor
    g = torch.Generator().manual_seed(9)
    x = integrate(runs[0][0], torch.randn(1000, 2, generator=g), method="euler", steps=20).x
    baseline = wasserstein2(torch.randn(1000, 2, generator=g), tgt(1000, g))
    assert wasserstein2(x, tgt(1000, g)) < 0.1 * baseline


def test_train_cfm_from_tensors_with_ot(gen):
    data0, data1 = torch.randn(500, 2, generator=gen), torch.randn(500, 2, generator=gen) + 3
    res = train_cfm(MLP(2), LinearPath(), data0, data1, steps=20, batch_size=64, coupling="ot", progress=False)
    assert len(res.losses) == 20 and res.seconds > 0


def test_fit_stops_on_nan():
    m = MLP(2)
    with pytest.raises(FloatingPointError, match="step 3"):
        fit(m, lambda step, g: m(torch.randn(2, 2), 0.5).sum() * (float("nan") if step == 3 else 1.0), steps=10,
            progress=False)


def test_fit_bad_arguments():
    m = MLP(2)
    with pytest.raises(ValueError, match="steps"):
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=0)
    with pytest.raises(ValueError, match="lr"):
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=1, lr=-1.0)
    with pytest.raises(TypeError, match="source"):
        train_cfm(m, LinearPath(), "gaussian", torch.zeros(4, 2), steps=1)


def test_cosine_schedule_decays_the_learning_rate_to_zero():
    m = MLP(2)
    seen = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=5, lr=1.0, lr_schedule="cosine", progress=False)
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=2, lr=0.5, progress=False)
    finally:
        torch.optim.AdamW.step = orig
    expected = [0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)] + [0.5, 0.5]
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=1, lr_schedule="linear")


def test_callback_sees_every_step():
    seen = []
    m = MLP(2)
    res = train_cfm(m, LinearPath(), torch.randn(64, 2), torch.randn(64, 2), steps=7, batch_size=8, progress=False,
                    callback=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(1, 8)) and [v for _, v in seen] == res.losses


# ---------------------------------------------------------------- runtime
def test_seed_reads_lfm_seed(monkeypatch):
    monkeypatch.delenv("LFM_SEED", raising=False)
    assert runtime.seed() == 0
    monkeypatch.setenv("LFM_SEED", " 7 ")
    assert runtime.seed() == 7 and "seed     : 7" in runtime.describe()
    for bad in ("-1", "1.5", "one"):
        monkeypatch.setenv("LFM_SEED", bad)
        with pytest.raises(ValueError, match="LFM_SEED"):
            runtime.seed()


def test_seed_everything_and_device():
    g1 = runtime.seed_everything(3)
    a = torch.rand(3)
    g2 = runtime.seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(2, generator=g1), torch.rand(2, generator=g2))
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(-1)
    assert runtime.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            runtime.get_device("cuda")
    assert "mode" in runtime.describe(n=3) and "n=3" in runtime.describe(n=3)


def test_ensemble_matches_its_members_and_trains_like_them():
    torch.manual_seed(0)
    models = [MLP(2, hidden=8, depth=2) for _ in range(3)]
    ens = MLPEnsemble.from_models(models)
    x, t = torch.randn(15, 2), torch.rand(15)  # member m owns rows [5 m, 5 m + 5)
    out = ens(x, t)
    assert out.shape == x.shape
    for i, m in enumerate(models):
        rows = slice(5 * i, 5 * i + 5)
        torch.testing.assert_close(out[rows], m(x[rows], t[rows]))
        torch.testing.assert_close(ens.member(i)(x[rows], t[rows]), m(x[rows], t[rows]))
    torch.testing.assert_close(ens(x, 0.3), torch.cat([m(x[5 * i:5 * i + 5], 0.3) for i, m in enumerate(models)]))
    # one AdamW step on the summed loss equals one step on each member alone
    opt = torch.optim.AdamW(ens.parameters(), lr=0.1, weight_decay=0.01)
    (ens(x, t) ** 2).sum().backward()
    opt.step()
    for i, m in enumerate(models):
        rows = slice(5 * i, 5 * i + 5)
        o = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.01)
        (m(x[rows], t[rows]) ** 2).sum().backward()
        o.step()
        torch.testing.assert_close(ens.member(i)(x[rows], t[rows]), m(x[rows], t[rows]))


def test_ensemble_trained_by_train_cfm_equals_members_trained_alone():
    """train_cfm on an ensemble = each member trained alone on its own batches (the loss sums the members')."""
    torch.manual_seed(0)
    models = [MLP(2, hidden=8, depth=2) for _ in range(2)]
    ens = MLPEnsemble.from_models(models)
    data = [torch.randn(64, 2, generator=torch.Generator().manual_seed(k)) + 3 for k in range(2)]
    train_cfm(ens, LinearPath(0.1), lambda n, g: torch.randn(n, 2, generator=g), data, steps=5, batch_size=16,
              coupling="ot", progress=False)
    # the same batches, member by member: rows of member m of each step's ensemble batch
    from lfm_core.batches import CFMBatches

    batches = CFMBatches(LinearPath(0.1), [lambda n, g: torch.randn(n, 2, generator=g)] * 2, data, 16,
                          coupling="ot", coupling_kwargs=None, prefetch=0, seed=0, paired=False, labels=None,
                          label_dropout=0.0, null_label=None, sampling="replacement")
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0) for m in models]
    for step in range(5):
        b = batches(step)
        for i, (m, o) in enumerate(zip(models, opts, strict=True)):
            rows = slice(16 * i, 16 * i + 16)
            loss = cfm_loss(m, LinearPath(0.1), b["x0"][rows], b["x1"][rows], t=b["t"][rows], noise=b["noise"][rows])
            o.zero_grad()
            loss.backward()
            o.step()
    for i, m in enumerate(models):
        for a, b in zip(ens.member(i).parameters(), m.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ensemble_bad_inputs():
    ens = MLPEnsemble(2, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[M B, 3\]"):
        ens(torch.randn(4, 2), torch.rand(4))
    with pytest.raises(ValueError, match="multiple of the 2 members"):
        ens(torch.randn(5, 3), torch.rand(5))
    with pytest.raises(ValueError, match="t must have shape"):
        ens(torch.randn(4, 3), torch.rand(2))
    with pytest.raises(ValueError, match="member index"):
        ens.member(2)
    with pytest.raises(TypeError, match="non-empty list"):
        MLPEnsemble.from_models([])
    with pytest.raises(ValueError, match="one configuration"):
        MLPEnsemble.from_models([MLP(2, hidden=8), MLP(2, hidden=16)])
    with pytest.raises(ValueError, match="one per ensemble member"):
        train_cfm(ens, LinearPath(), torch.randn(8, 3), [torch.randn(8, 3)] * 3, steps=1, progress=False)


def test_grad_clip_bounds_the_step_and_is_validated():
    # one SGD-like step of AdamW is sign-like, so compare the gradient norm seen by the optimiser instead
    m = torch.nn.Linear(2, 1)
    norms = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        norms.append(float(torch.cat([p.grad.flatten() for p in m.parameters()]).norm()))
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        fit(m, lambda s, g: 1000 * m(torch.ones(4, 2)).sum(), steps=2, grad_clip=0.5, progress=False)
        fit(m, lambda s, g: 1000 * m(torch.ones(4, 2)).sum(), steps=1, progress=False)
    finally:
        torch.optim.AdamW.step = orig
    assert norms[:2] == pytest.approx([0.5, 0.5], rel=1e-5)
    assert norms[2] > 1000
    for bad in (0, -1.0, float("inf"), "1"):
        with pytest.raises((ValueError, TypeError), match="grad_clip"):
            fit(m, lambda s, g: m(torch.ones(1, 2)).sum(), steps=1, grad_clip=bad)


def test_paired_training_keeps_the_pairs():
    # pairs x1 = R x0 with R a quarter turn: N(0, I) -> N(0, I), so independent pairs would learn (nearly) the
    # identity; trained on the pairs, the flow learns the rotation ((1 - t) I + t R is invertible for every t)
    x0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    x1 = x0 @ rot.T
    m = MLP(2, 64, 3)
    train_cfm(m, LinearPath(0.0), x0, x1, steps=800, batch_size=256, lr=3e-3, lr_schedule="cosine", paired=True,
              progress=False)
    z = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = integrate(m, z, method="euler", steps=20).x
    err = float((out - z @ rot.T).norm(dim=1).mean())
    assert err < 0.15 * float(z.norm(dim=1).mean()), err
    with pytest.raises(ValueError, match="same shape"):
        train_cfm(m, LinearPath(), x0, x1[:10], steps=1, paired=True)
    with pytest.raises(TypeError, match="tensor"):
        train_cfm(m, LinearPath(), lambda n, g: torch.randn(n, 2), x1, steps=1, paired=True)
    with pytest.raises(ValueError, match="independent"):
        train_cfm(m, LinearPath(), x0, x1, steps=1, paired=True, coupling="ot")


def test_reflow_pairs_are_the_flow_of_the_model():
    m = MLP(2)
    x0, x1 = reflow_pairs(m, lambda n, g: torch.randn(n, 2, generator=g), 300, steps=5, batch_size=128,
                          generator=torch.Generator().manual_seed(0))
    assert x0.shape == x1.shape == (300, 2)
    with torch.no_grad():
        assert torch.allclose(x1, integrate(m, x0, method="euler", steps=5).x, atol=1e-6)
    with pytest.raises(ValueError, match="n"):
        reflow_pairs(m, torch.randn(5, 2), 0)


def test_trainer_settings_are_passed_by_name_over_the_defaults():
    """train_cfm and fit take TrainerConfig's fields by name (over lr=1e-3, no EMA, no clipping, fp32) or as a
    config; a name that is neither theirs nor a field is a TypeError naming it."""
    from lfm_core.trainer import TrainerConfig

    src, tgt = torch.randn(32, 2), torch.randn(32, 2) + 3
    with pytest.raises(TypeError, match=r"train_cfm\(\) got an unexpected keyword argument 'lrr'"):
        train_cfm(MLP(2), LinearPath(), src, tgt, steps=1, lrr=1e-3)
    m = MLP(2)
    with pytest.raises(TypeError, match=r"fit\(\) got an unexpected keyword argument 'batch'"):
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=1, batch=4)
    with pytest.raises(TypeError, match="batch_size"):
        fit(m, lambda s, g: m(torch.zeros(1, 2), 0.0).sum(), steps=1, batch_size=4)
    with pytest.raises(TypeError, match="config must be a TrainerConfig"):
        train_cfm(MLP(2), LinearPath(), src, tgt, steps=1, config={"lr": 1e-3})
    runs = []
    for kwargs in (dict(lr=3e-3, warmup=2, ema_decay=0.9),
                   dict(config=TrainerConfig(steps=99, batch_size=1, lr=3e-3, warmup=2, ema_decay=0.9, grad_clip=None,
                                             precision="fp32"))):
        torch.manual_seed(0)
        runs.append(train_cfm(MLP(2, hidden=8), LinearPath(), src, tgt, steps=4, batch_size=8, progress=False,
                              **kwargs))
    assert runs[0].losses == runs[1].losses and len(runs[0].losses) == 4 and runs[0].ema is not None
    torch.manual_seed(0)
    plain = train_cfm(MLP(2, hidden=8), LinearPath(), src, tgt, steps=2, batch_size=8, progress=False)
    assert plain.ema is None  # train_cfm's default: no EMA


def test_cfm_loss_refuses_unknown_coupling_kwargs_and_train_cfm_dropout_without_labels():
    from lfm_core import paths as _paths
    from lfm_core import training as _training
    from lfm_core.nets import MLP as _MLP

    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match="coupling_kwargs"):
        _training.cfm_loss(_MLP(2), _paths.LinearPath(), x, x, coupling_kwargs={"nope": 1})
    with pytest.raises(ValueError, match="coupling_kwargs"):
        _training.cfm_loss(_MLP(2), _paths.LinearPath(), x, x, coupling="ot", coupling_kwargs={"nope": 1})
    assert torch.isfinite(_training.cfm_loss(_MLP(2), _paths.LinearPath(), x, x, coupling="sinkhorn",
                                             coupling_kwargs={"reg": 0.5}))
    with pytest.raises(ValueError, match="label_dropout.*labels"):
        _training.train_cfm(_MLP(2), _paths.LinearPath(), torch.zeros(16, 2), torch.zeros(16, 2), steps=1,
                            batch_size=4, label_dropout=0.2, progress=False)
    with pytest.raises(ValueError, match="coupling_kwargs"):
        _training.train_cfm(_MLP(2), _paths.LinearPath(), torch.zeros(16, 2), torch.zeros(16, 2), steps=1,
                            batch_size=4, coupling="ot", coupling_kwargs={"nope": 1}, progress=False)
