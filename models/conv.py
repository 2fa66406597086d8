"""Convolutional autoencoder: the second source document's network and its variants.

Default (channels=(16, 8), latent_dim=64, dropout 0.2) is exactly the document's layer list on
28x28 inputs. Its parameters are the document's per-layer counts (160, 1160, 25152, 25480, 1168,
1160, 73), which add up to 54,353: the document's printed total of 37,353 is an arithmetic slip.
  encoder Conv(1,16)-ReLU-Pool-Dropout-Conv(16,8)-ReLU-Pool-Flatten-Linear(392,64)
  decoder Linear(64,392)-[8,7,7]-ConvT(8,16)-ReLU-Dropout-ConvT(16,8)-ReLU-Conv(8,1)-Sigmoid
Generalised to L stages (channels c_1..c_L): each encoder stage halves H and W; the decoder's
transposed convolutions run c_L -> c_{L-1} -> ... -> c_1 -> c_L (the document's 16 -> 8), then a
3x3 conv to one channel. Dropout follows every stage but the last, in both halves, as in the document.
H and W must be divisible by 2**L (28x28: L <= 2; 8x8: L <= 3).
"""

from collections.abc import Sequence

import torch
from torch import nn


class ConvAutoencoder(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int] = (28, 28),
        channels: Sequence[int] = (16, 8),
        latent_dim: int = 64,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        h, w = image_shape
        depth = len(channels)
        if depth < 1 or h % 2**depth or w % 2**depth:
            raise ValueError(
                f"conv autoencoder: image {h}x{w} is not divisible by 2**{depth} "
                f"(one halving per stage of channels {tuple(channels)})"
            )
        self.image_shape = (h, w)
        self.bottleneck = (channels[-1], h // 2**depth, w // 2**depth)  # e.g. [8, 7, 7]
        n_flat = channels[-1] * (h // 2**depth) * (w // 2**depth)

        enc: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([1, *channels[:-1]], channels, strict=True)):
            # [B, c_in, h, w] -> [B, c_out, h/2, w/2]
            enc += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)]
            if i < depth - 1 and dropout > 0:
                enc.append(nn.Dropout(dropout))
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(n_flat, latent_dim))

        dec_channels = [*reversed(channels), channels[-1]]  # (16, 8) -> 8, 16, 8
        dec: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(dec_channels[:-1], dec_channels[1:], strict=True)):
            # [B, c_in, h, w] -> [B, c_out, 2h, 2w]
            dec += [
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
                nn.ReLU(),
            ]
            if i < depth - 1 and dropout > 0:
                dec.append(nn.Dropout(dropout))
        self.fc_dec = nn.Linear(latent_dim, n_flat)
        self.decoder = nn.Sequential(*dec, nn.Conv2d(channels[-1], 1, 3, padding=1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 1, H, W] -> z: [B, latent_dim]
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B, latent_dim] -> [B, c_L, H/2**L, W/2**L] -> x_hat: [B, 1, H, W]
        return self.decoder(self.fc_dec(z).view(-1, *self.bottleneck))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
