"""Build an autoencoder from its typed description (tune.config.Autoencoder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.conv import ConvAutoencoder
from models.mlp import MLPAutoencoder

if TYPE_CHECKING:
    from tune.config import Autoencoder


def build_autoencoder(ae: Autoencoder, image_shape: tuple[int, int]) -> nn.Module:
    """MLPAutoencoder or ConvAutoencoder for `ae.arch`, sized for `image_shape` (H, W)."""
    if ae.arch == "mlp":
        return MLPAutoencoder(
            image_shape=image_shape,
            hidden=ae.net.hidden,
            latent_dim=ae.latent_dim,
            activation=ae.net.activation,
            dropout=ae.dropout,
            batch_norm=ae.net.batch_norm,
        )
    if ae.arch == "conv":
        return ConvAutoencoder(
            image_shape=image_shape,
            channels=ae.net.channels,
            latent_dim=ae.latent_dim,
            dropout=ae.dropout,
        )
    raise ValueError(f"unknown architecture {ae.arch!r}: expected 'mlp' or 'conv'")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
