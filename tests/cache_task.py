"""A small autoencoder and data set shared by tests/test_kill.py and tests/kill_task.py."""

import torch

from lfm_core import autoencoders, images


def autoencoder_and_data():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(**autoencoders.offline_config(in_channels=1, channels=(16, 16, 16)))
    ae = autoencoders.LatentAutoencoder(model, 0.5, "kill-test")
    return ae, images.load("digits", size=16, limit=48)
