"""lfm_core: the reusable parts of the latent flow matching notebooks.

One concept per module. Each module's docstring ends with a ``Copy with:`` line naming the sibling modules
it needs: copied together into one package folder of another project, they work there unchanged
(``tests/test_copyable.py`` checks this for every module).

Time convention: ``t = 0`` is the source (noise) ``x0``, ``t = 1`` the target (data) ``x1``,
and ``u_t = d x_t / dt``. The LFM paper uses the flipped convention; map with ``t' = 1 - t``,
``v' = -v``. A velocity is any callable ``v(x, t, **cond)`` with ``t`` of shape ``[B]`` that returns a
tensor shaped like ``x``.
"""

from . import (
    autoencoders,
    average_velocity,
    batches,
    bounds,
    celeba,
    checkpoints,
    classifier,
    compare,
    conditioning,
    couplings,
    devices,
    exercises,
    explore,
    fashion_mnist,
    guidance,
    hub,
    image_files,
    images,
    interpolants,
    latent_cache,
    metrics,
    mixtures,
    nets,
    paths,
    pretrained,
    runtime,
    solvers,
    store,
    straightness,
    toy,
    trainer,
    trainer_config,
    training,
    utils,
)

__version__ = "0.1.0"

__all__ = ["autoencoders", "average_velocity", "batches", "bounds", "celeba", "checkpoints", "classifier", "compare",
           "conditioning", "couplings", "devices", "exercises", "explore",
           "fashion_mnist", "guidance", "hub", "image_files", "images",
           "interpolants", "latent_cache", "metrics", "mixtures", "nets", "paths", "pretrained", "runtime", "solvers",
           "store", "straightness", "toy", "trainer", "trainer_config", "training", "utils"]
