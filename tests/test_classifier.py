"""lfm_core.classifier: the small classifier, its features as FID's extractor, the Frechet distance, the shipped one."""

import math

import pytest
import torch

from lfm_core import classifier, images, metrics


def _two_classes(n=64, seed=0):
    """Dark images with a bright left half (class 0) or a bright right half (class 1), with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = -torch.ones(n, 1, 12, 12)
    for i, label in enumerate(y.tolist()):
        x[i, :, :, (0 if label == 0 else 6):(6 if label == 0 else 12)] = 0.8
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


def test_training_separates_two_classes_and_features_have_the_configured_size():
    torch.manual_seed(0)
    model = classifier.SmallClassifier(1, 2, width=8, dim=16)
    x, y = _two_classes()
    assert classifier.features(model, x).shape == (64, 16)
    fit = classifier.train_classifier(model, x, y, steps=60, batch_size=32, lr=3e-3, progress=False)
    assert len(fit["losses"]) == 60 and fit["losses"][-1] < 0.5 * fit["losses"][0]
    xt, yt = _two_classes(seed=1)
    assert classifier.accuracy(model, xt, yt) == 1.0


def test_frechet_distance_matches_the_closed_form_and_is_zero_for_equal_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert classifier.frechet_distance(a, a) < 1e-9
    # N(0, I) against N(m, 4 I): |m|^2 + sum (1 - 2)^2 = |m|^2 + 3 in the limit; here with the sample moments
    b = 2 * torch.randn(4000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0.0, -1.0],
                                                                                 dtype=torch.float64)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    ea, va = torch.linalg.eigh(ca)
    ra = va @ torch.diag(ea.sqrt()) @ va.T
    cross = torch.linalg.eigvalsh(ra @ cb @ ra).sqrt().sum()
    want = float((a.mean(0) - b.mean(0)).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross)
    assert classifier.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert classifier.frechet_distance(a, b) == pytest.approx(5.0, abs=0.3)


def test_frechet_distance_agrees_with_scipys_matrix_square_root_for_non_commuting_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    mix_a, mix_b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 5, generator=g,
                                                                                    dtype=torch.float64)
    a = torch.randn(300, 5, generator=g, dtype=torch.float64) @ mix_a
    b = torch.randn(400, 5, generator=g, dtype=torch.float64) @ mix_b + 0.5
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    cross = scipy_linalg.sqrtm(ca @ cb).real.trace()   # tr (C_a C_b)^(1/2), the textbook form
    want = float((a.mean(0) - b.mean(0)).pow(2).sum()) + ca.trace() + cb.trace() - 2 * cross
    assert classifier.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)


def test_fashion_mnist_split_is_its_own_and_refuses_other_data():
    data = images.ImageData(torch.zeros(70_000, 1, 2, 2), torch.arange(70_000) % 10, "fashion_mnist", "test", 10)
    train, test = images.fashion_mnist_split(data)
    assert (len(train), len(test)) == (60_000, 10_000) and int(test.labels[0]) == 60_000 % 10
    with pytest.raises(ValueError, match="needs all 70 000 images"):
        images.fashion_mnist_split(data.load(1000))
    with pytest.raises(TypeError, match="load\\('fashion_mnist'\\)"):
        images.fashion_mnist_split(images.load("digits", limit=10))


def test_features_module_gives_metrics_fid_the_same_number_as_frechet_distance():
    pytest.importorskip("torchmetrics")
    torch.manual_seed(0)
    model = classifier.SmallClassifier(1, 2, width=8, dim=16).eval()
    x, _ = _two_classes(40)
    y = (x + 0.3 * torch.randn(x.shape)).clamp(-1, 1)
    ext = classifier.Features(model)
    torch.testing.assert_close(ext(((x + 1) / 2).expand(-1, 3, -1, -1)), model.features(x))
    direct = classifier.frechet_distance(classifier.features(model, x), classifier.features(model, y))
    assert direct > 0
    assert metrics.fid(x, y, feature_extractor=ext) == pytest.approx(direct, rel=1e-3)


def test_the_shipped_fashion_classifier_loads_and_scores_the_test_split():
    model, record = classifier.load("fashion_mnist")
    assert isinstance(model, classifier.SmallClassifier) and record["test_accuracy"] > 0.88
    assert record["command"].startswith("python scripts/train_classifier.py")
    try:
        data = images.load("fashion_mnist")
    except FileNotFoundError:
        pytest.skip("Debian's dataset-fashion-mnist package is not installed")
    _, test = images.fashion_mnist_split(data)
    test_x, test_y = test.images, test.labels
    assert classifier.accuracy(model, test_x[:2000], test_y[:2000]) == pytest.approx(
        record["test_accuracy"], abs=0.03)   # its 10 000 test images in the record, 2000 of them here


@pytest.mark.parametrize("call, error, message", [
    (lambda: classifier.SmallClassifier(0), ValueError, "in_channels"),
    (lambda: classifier.SmallClassifier(1, 1), ValueError, "num_classes must be at least 2"),
    (lambda: classifier.SmallClassifier(1, 2, width=2.5), TypeError, "width"),
    (lambda: classifier.SmallClassifier(1, 2, width=12), ValueError, "width must be a multiple of 8"),
    (lambda: classifier.accuracy(torch.nn.Linear(2, 2), torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])), TypeError,
     "model must be a SmallClassifier"),
    (lambda: classifier.SmallClassifier(1, 2)(torch.zeros(2, 3, 8, 8)), ValueError, r"x must have shape \[N, 1"),
    (lambda: classifier.Features(torch.nn.Linear(2, 2)), TypeError, "classifier must be a SmallClassifier"),
    (lambda: classifier.train_classifier(torch.nn.Linear(2, 2), torch.zeros(2, 1, 8, 8), torch.zeros(2).long(),
                                         steps=1), TypeError, "model must be a SmallClassifier"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.zeros(2), steps=1), TypeError, "labels must be an integer tensor"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.tensor([0, 2]), steps=1), ValueError, r"labels must lie in 0\.\.1"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.tensor([0, 1, 1]), steps=1), TypeError, r"shape \[2\]"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.full((2, 1, 8, 8), math.nan),
                                         torch.tensor([0, 1]), steps=1), ValueError, "images"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.tensor([0, 1]), steps=0), ValueError, "steps"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.tensor([0, 1]), steps=1, lr=math.inf), ValueError, "lr"),
    (lambda: classifier.train_classifier(classifier.SmallClassifier(1, 2), torch.zeros(2, 1, 8, 8),
                                         torch.tensor([0, 1]), steps=1, shift=-1), ValueError, "shift"),
    (lambda: classifier.frechet_distance(torch.zeros(1, 3), torch.zeros(4, 3)), ValueError, r"a must be feature rows"),
    (lambda: classifier.frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2)), ValueError, "same number of features"),
    (lambda: classifier.frechet_distance(torch.zeros(4, 3), torch.full((4, 3), math.nan)), ValueError, "b"),
    (lambda: classifier.frechet_distance([[0.0]], torch.zeros(4, 3)), TypeError, "a"),
    (lambda: classifier.load("mnist"), ValueError, "name must be one of"),
])
def test_bad_inputs_are_refused_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
