r"""The batches of conditional flow matching: :class:`CFMBatches`, the batch function of
:func:`lfm_core.training.train_cfm` (and of :func:`lfm_core.average_velocity.train_meanflow`).

Batch ``k`` of a run seeded with ``s`` is a pure function of ``(s, k)``: its points, the seeds of its
couplings, its times, its noise and its label dropout are all drawn from one generator seeded with
``mix(s, k)`` (:func:`_mix`, a splitmix64-style hash, so that the steps' streams are independent). So the
couplings of the next steps can be computed ahead in worker threads (``prefetch``) and a resumed run draws
exactly what an uninterrupted one would, whatever happened before.

Each step draws, for each ensemble member ``m`` (one unless the model is an ensemble):

* ``x0`` from the source and ``x1`` from the target: rows of a tensor (with replacement, or in epochs of
  shuffled batches that drop the last incomplete batch) or ``sampler(n, generator)``; with ``paired`` the
  same rows of both (given pairs, e.g. rectified flow's reflow);
* a seed for the coupling, which reorders the pair ``(x0, x1)`` (:func:`lfm_core.couplings.pair_indices`),
  within classes when there are labels;

then the times ``t`` (``path.sample_time``), the path's noise if it has any, and, for labels, which of them
become the null label (classifier-free guidance, :func:`lfm_core.guidance.drop_labels`).

Copy with: couplings, guidance, utils (``torch``, ``numpy``, ``POT`` for the exact couplings).
"""

from __future__ import annotations

import torch

from . import couplings, guidance
from .utils import (
    check_bool,
    check_finite,
    check_nonnegative_int,
    check_positive_int,
    check_probability,
    check_seed,
    check_tensor,
)

__all__ = ["CFMBatches"]


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64-style), so that each step gets an independent stream."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


#: the keyword arguments of :func:`lfm_core.couplings.pair_indices` that ``coupling_kwargs`` may hold
COUPLING_KWARGS = ("reg", "tol", "replace", "labels", "groups", "block_size")


def _check_coupling(coupling, coupling_kwargs, allowed=COUPLING_KWARGS) -> dict:
    """``coupling_kwargs`` as a dict, after checking ``coupling`` names a method and the keys are known ones."""
    if not isinstance(coupling, str):
        raise TypeError(f"coupling must be a str (one of {', '.join(couplings.METHODS)}), got "
                        f"{type(coupling).__name__}")
    if coupling not in couplings.METHODS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(couplings.METHODS)}")
    if coupling_kwargs is None:
        return {}
    if not isinstance(coupling_kwargs, dict):
        raise TypeError(f"coupling_kwargs must be a dict or None, got {type(coupling_kwargs).__name__}")
    unknown = sorted(str(k) for k in coupling_kwargs if k not in allowed)
    if unknown:
        raise ValueError(f"coupling_kwargs has unknown key(s) {', '.join(map(repr, unknown))}; the coupling takes "
                         f"{', '.join(allowed)}")
    return dict(coupling_kwargs)


class _Sampler:
    """Rows of a tensor (with replacement, or in epochs of shuffled batches) or a callable ``(n, generator)``."""

    def __init__(self, source, name: str, sampling: str, seed: int):
        self.name = name
        if isinstance(source, torch.Tensor):
            check_tensor(source, name, min_dim=2)
            check_finite(source, name, boundary=True)
            self.data = source
        elif callable(source):
            self.data = None
            self.fn = source
        else:
            raise TypeError(f"{name} must be a tensor of points or a callable (n, generator) -> tensor, got "
                            f"{type(source).__name__}")
        self.sampling, self.seed, self._perm = sampling, seed, (None, None)

    def indices(self, n: int, step: int, g: torch.Generator) -> torch.Tensor:
        size = self.data.shape[0]
        if self.sampling == "replacement":
            return torch.randint(0, size, (n,), generator=g)
        per_epoch = size // n
        if per_epoch == 0:
            raise ValueError(f"sampling='epochs' needs at least one full batch: {self.name} has {size} rows, "
                             f"batch {n}")
        epoch, i = divmod(step, per_epoch)
        if self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(size, generator=torch.Generator().manual_seed(_mix(self.seed, epoch))))
        return self._perm[1][i * n:(i + 1) * n]

    def draw(self, n: int, step: int, g: torch.Generator) -> torch.Tensor:
        if self.data is None:
            x = self.fn(n, g)
            if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != n:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"{self.name}(n, generator) must return a tensor of n = {n} rows, got {got}")
            return x
        idx = self.indices(n, step, g)
        return self.data[idx.to(self.data.device)]


class CFMBatches:
    """The batch function of :func:`lfm_core.training.train_cfm`, ``(step) -> {"x0", "x1", "t", "noise"?, "labels"?}``.

    Batch ``k`` is a pure function of ``(seed, k)`` (the module docstring says how it is drawn). ``sources``
    and ``targets`` hold one sampler per ensemble member, ``labels`` (or ``None``) one integer tensor per member
    (the classes of the target rows). The labels are kept on the CPU, where the couplings and the dropout read
    them; the trainer moves each batch to the device.
    """

    def __init__(self, path, sources, targets, batch_size, *, coupling="independent", coupling_kwargs=None,
                 prefetch=0, seed=0, paired=False, labels=None, label_dropout=0.0, null_label=None,
                 sampling="replacement"):
        if not callable(getattr(path, "sample_time", None)):
            raise TypeError(f"path must have sample_time(n, generator, dtype) (lfm_core.paths or an interpolant), "
                            f"got {type(path).__name__}")
        check_positive_int(batch_size, "batch_size")
        kwargs = _check_coupling(coupling, coupling_kwargs, tuple(k for k in COUPLING_KWARGS if k != "labels"))
        check_nonnegative_int(prefetch, "prefetch")
        check_seed(seed, "seed")
        check_bool(paired, "paired")
        if not isinstance(sampling, str) or sampling not in ("replacement", "epochs"):
            raise ValueError(f"sampling must be 'replacement' or 'epochs', got {sampling!r}")
        label_dropout = check_probability(label_dropout, "label_dropout")
        for value, name in ((sources, "sources"), (targets, "targets")):
            if not isinstance(value, (list, tuple)) or not value:
                got = f"{len(value)} items" if isinstance(value, (list, tuple)) else type(value).__name__
                raise (ValueError if isinstance(value, (list, tuple)) else TypeError)(
                    f"{name} must be a non-empty list of samplers (one per ensemble member), got {got}")
        if len(sources) != len(targets):
            raise ValueError(f"sources and targets must hold one sampler per ensemble member each, got "
                             f"{len(sources)} sources and {len(targets)} targets")
        self.path, self.b, self.seed = path, batch_size, seed
        self.members = len(targets)
        self.coupling, self.kwargs = coupling, kwargs
        self.paired, self.p_drop, self.null = paired, label_dropout, null_label
        self.labels = None if labels is None else [y.cpu() for y in labels]
        self.src = [_Sampler(s, f"sources[{m}]", sampling, _mix(seed, 1, m)) for m, s in enumerate(sources)]
        self.tgt = [_Sampler(s, f"targets[{m}]", sampling, _mix(seed, 2, m)) for m, s in enumerate(targets)]
        for m, (a, b) in enumerate(zip(self.src, self.tgt, strict=True)):
            if a.data is not None and b.data is not None and a.data.shape[1:] != b.data.shape[1:]:
                raise ValueError(f"sources[{m}] and targets[{m}] must hold points of one shape, got "
                                 f"{tuple(a.data.shape[1:])} and {tuple(b.data.shape[1:])}")
            if paired and (a.data is None or b.data is None or a.data.shape[0] != b.data.shape[0]):
                raise ValueError(f"paired=True needs sources[{m}] and targets[{m}] as tensors of the same number "
                                 f"of rows")
        self.prefetch = prefetch
        self.pool, self.queue, self.next_step = None, {}, None

    def _draw(self, step: int):
        """The step's points, coupling seeds, times and noise; returns its generator too, for the label dropout."""
        g = torch.Generator().manual_seed(_mix(self.seed, step))
        jobs = []
        for m in range(self.members):
            if self.paired:
                idx = self.tgt[m].indices(self.b, step, g)
                x0, x1 = self.src[m].data[idx.to(self.src[m].data.device)], self.tgt[m].data[idx.to(
                    self.tgt[m].data.device)]
                y = None
            else:
                x0 = self.src[m].draw(self.b, step, g)
                if self.labels is not None:
                    idx = self.tgt[m].indices(self.b, step, g)
                    x1, y = self.tgt[m].data[idx.to(self.tgt[m].data.device)], self.labels[m][idx]
                else:
                    x1, y = self.tgt[m].draw(self.b, step, g), None
            seed = int(torch.randint(0, 2**62, (1,), generator=g)) if self.coupling != "independent" else 0
            jobs.append((x0, x1, y, seed))
        n = self.b * self.members
        t = self.path.sample_time(n, generator=g, dtype=jobs[0][0].dtype)
        noise = (torch.randn((n, *jobs[0][0].shape[1:]), generator=g, dtype=jobs[0][0].dtype)
                 if getattr(self.path, "has_noise", False) else None)
        return jobs, t, noise, g

    def _couple(self, x0, x1, y, seed):
        if self.coupling == "independent":
            return x0, x1, y
        gen = torch.Generator().manual_seed(seed)
        kwargs = dict(self.kwargs)
        if y is not None:
            kwargs["labels"] = y
        i0, i1 = couplings.pair_indices(x0, x1, self.coupling, generator=gen, **kwargs)
        return x0[i0], x1[i1], None if y is None else y[i1.to(y.device)]

    def _submit(self, step):
        jobs, t, noise, g = self._draw(step)
        if self.pool is None:
            return [self._couple(*j) for j in jobs], t, noise, g
        return [self.pool.submit(self._couple, *j) for j in jobs], t, noise, g

    def __call__(self, step: int, generator=None) -> dict:
        if self.prefetch and self.coupling != "independent":
            if self.pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self.pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="coupling")
            if self.next_step != step:  # first call, or a jump (resume): start the queue here
                self.queue = {}
            for k in range(step, step + self.prefetch + 1):
                if k not in self.queue:
                    self.queue[k] = self._submit(k)
            futures, t, noise, g = self.queue.pop(step)
            parts = [f.result() for f in futures]
            self.next_step = step + 1
        else:
            parts, t, noise, g = self._submit(step)
        x0 = torch.cat([p[0] for p in parts]) if self.members > 1 else parts[0][0]
        x1 = torch.cat([p[1] for p in parts]) if self.members > 1 else parts[0][1]
        out = {"x0": x0, "x1": x1, "t": t}
        if noise is not None:
            out["noise"] = noise
        if self.labels is not None:
            y = torch.cat([p[2] for p in parts]).long()
            if self.p_drop > 0:  # the step's generator, after its other draws
                y = guidance.drop_labels(y, self.null, self.p_drop, generator=g)
            out["labels"] = y
        return out

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
