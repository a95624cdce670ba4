"""Data sets: 2D toy distributions (:mod:`lfm_core.data.toy`); image data sets come with the latent issue."""

from . import toy

__all__ = ["toy"]
