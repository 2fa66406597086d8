"""Autoencoder shapes and parameter counts against the two source documents."""

import pytest
import torch

from models.build import build_autoencoder, count_parameters
from models.conv import ConvAutoencoder
from models.mlp import MLPAutoencoder
from tune.config import Autoencoder, ConvNet, MLPNet

DOC1 = Autoencoder("mlp", MLPNet(hidden=(128,), activation="relu", batch_norm=False), 64, 0.0)
DOC2 = Autoencoder("conv", ConvNet(channels=(16, 8)), latent_dim=64, dropout=0.2)


def test_doc1_mlp_is_exact():
    model = build_autoencoder(DOC1, (28, 28))
    assert count_parameters(model) == 218_192
    assert [type(m).__name__ for m in model.encoder] == ["Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in model.decoder] == ["Linear", "ReLU", "Linear", "Sigmoid"]
    assert [
        (m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)
    ] == [
        (784, 128),
        (128, 64),
        (64, 128),
        (128, 784),
    ]


def test_doc2_conv_matches_the_documents_layer_list():
    model = build_autoencoder(DOC2, (28, 28))
    # The document's per-layer counts, in its order; they sum to 54,353 (its "37,353" is a slip).
    per_layer = [
        sum(p.numel() for p in m.parameters())
        for m in model.modules()
        if list(m.parameters(recurse=False))
    ]
    assert sorted(per_layer) == sorted([160, 1160, 25152, 25480, 1168, 1160, 73])
    assert count_parameters(model) == 54_353
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.2, 0.2]
    x = torch.rand(5, 1, 28, 28)
    assert model.encode(x).shape == (5, 64)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("shape", [(28, 28), (8, 8)])
@pytest.mark.parametrize(
    "model",
    [
        lambda s: MLPAutoencoder(
            s, hidden=(256, 64, 32), latent_dim=10, activation="gelu", dropout=0.1, batch_norm=True
        ),
        lambda s: MLPAutoencoder(s, hidden=(32,), latent_dim=2, activation="tanh"),
        lambda s: ConvAutoencoder(s, channels=(4, 8), latent_dim=16, dropout=0.0),
        lambda s: ConvAutoencoder(s, channels=(32,), latent_dim=8),
    ],
)
def test_variants_work_for_both_image_sizes(shape, model):
    m = model(shape)
    x = torch.rand(4, 1, *shape)
    out = m(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1  # Sigmoid output
    out.sum().backward()


def test_conv_rejects_indivisible_images():
    with pytest.raises(ValueError, match="not divisible"):
        ConvAutoencoder((28, 28), channels=(8, 8, 8))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_autoencoder(Autoencoder("transformer", ConvNet((8,)), 8, 0.0), (28, 28))
