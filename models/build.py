"""Build an autoencoder from a flat trial config (the keys the search spaces use)."""

from collections.abc import Mapping
from typing import Any

from torch import nn

from models.conv import ConvAutoencoder
from models.mlp import MLPAutoencoder


def hidden_sizes(config: Mapping[str, Any], prefix: str) -> list[int]:
    """[config[f"{prefix}_1"], ..., config[f"{prefix}_{depth}"]] for prefix mlp_width / conv_channels."""
    depth = int(config["mlp_depth" if prefix == "mlp_width" else "conv_depth"])
    return [int(config[f"{prefix}_{i}"]) for i in range(1, depth + 1)]


def build_autoencoder(config: Mapping[str, Any], image_shape: tuple[int, int]) -> nn.Module:
    """MLPAutoencoder or ConvAutoencoder for `config["arch"]`, sized for `image_shape` (H, W)."""
    arch = config["arch"]
    if arch == "mlp":
        return MLPAutoencoder(
            image_shape=image_shape,
            hidden=hidden_sizes(config, "mlp_width"),
            latent_dim=int(config["latent_dim"]),
            activation=config.get("mlp_activation", "relu"),
            dropout=float(config.get("dropout", 0.0)),
            batch_norm=bool(config.get("mlp_batch_norm", False)),
        )
    if arch == "conv":
        return ConvAutoencoder(
            image_shape=image_shape,
            channels=hidden_sizes(config, "conv_channels"),
            latent_dim=int(config["latent_dim"]),
            dropout=float(config.get("dropout", 0.0)),
        )
    raise ValueError(f"unknown architecture {arch!r}: expected 'mlp' or 'conv'")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
