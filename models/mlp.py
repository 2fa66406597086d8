"""Fully connected autoencoder: the first source document's network and its variants.

Default (hidden=(128,), latent_dim=64, ReLU, no dropout, no batch norm) is exactly the document's
784-128-64 / 64-128-784-Sigmoid network with 218,192 parameters.
"""

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def _mlp(
    sizes: Sequence[int], activation: str, dropout: float, batch_norm: bool
) -> list[nn.Module]:
    """Linear layers between consecutive sizes; activation (+BN, +dropout) after all but the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return layers


class MLPAutoencoder(nn.Module):
    """Encoder in -> hidden... -> latent (linear), decoder latent -> reversed hidden... -> in, Sigmoid."""

    def __init__(
        self,
        image_shape: tuple[int, int] = (28, 28),
        hidden: Sequence[int] = (128,),
        latent_dim: int = 64,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_in = self.image_shape[0] * self.image_shape[1]
        self.encoder = nn.Sequential(
            *_mlp([n_in, *hidden, latent_dim], activation, dropout, batch_norm)
        )
        self.decoder = nn.Sequential(
            *_mlp([latent_dim, *reversed(hidden), n_in], activation, dropout, batch_norm),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 1, H, W] in [0, 1] -> z: [B, latent_dim]
        return self.encoder(x.flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B, latent_dim] -> x_hat: [B, 1, H, W]
        return self.decoder(z).view(-1, 1, *self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 1, H, W] -> x_hat: [B, 1, H, W]
        return self.decode(self.encode(x))
