"""lfm_core: the reusable parts of the latent flow matching notebooks.

One concept per module; each depends only on third-party packages and :mod:`lfm_core.utils`
(plus the sibling modules it names in its docstring), so it can be copied on its own.

Time convention: ``t = 0`` is the source (noise) ``x0``, ``t = 1`` the target (data) ``x1``,
and ``u_t = d x_t / dt``. The LFM paper uses the flipped convention; map with ``t' = 1 - t``,
``v' = -v``.
"""

from . import couplings, data, metrics, mixtures, nets, paths, runtime, solvers, training, utils

__version__ = "0.1.0"

__all__ = ["couplings", "data", "metrics", "mixtures", "nets", "paths", "runtime", "solvers", "training", "utils"]
