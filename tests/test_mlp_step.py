"""The closed-form MLP step computes what autograd computes."""

import copy

import pytest
import torch

import tune.training as training
from models.conv import ConvAutoencoder
from models.mlp import MLPAutoencoder
from tune.mlp_step import MLPStep


@pytest.mark.parametrize(
    "kw",
    [
        {},  # the first document's network
        {"hidden": (64, 32, 16), "latent_dim": 8, "activation": "tanh"},
        {"hidden": (48,), "latent_dim": 4, "activation": "leaky_relu"},
    ],
)
def test_gradients_equal_autograd(kw):
    torch.manual_seed(0)
    model = MLPAutoencoder((8, 8), **kw)
    x = torch.rand(32, 1, 8, 8)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    loss = MLPStep.for_model(model)(x)
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    ref = torch.nn.functional.mse_loss(model(x), x)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-6, atol=0)
    for g, p in zip(fast, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-8)


def test_training_with_and_without_it_matches(monkeypatch):
    torch.manual_seed(0)
    a = MLPAutoencoder((8, 8), hidden=(32,), latent_dim=6)
    b = copy.deepcopy(a)
    x = torch.rand(300, 1, 8, 8)
    kw = {"lr": 1e-2, "weight_decay": 1e-6, "batch_size": 32, "epochs": 3, "seed": 1}
    ha = training.train_autoencoder(a, x, x[:50], **kw)
    monkeypatch.setattr(training.MLPStep, "for_model", staticmethod(lambda m: None))
    hb = training.train_autoencoder(b, x, x[:50], **kw)
    for ra, rb in zip(ha, hb, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "model",
    [
        MLPAutoencoder((8, 8), batch_norm=True),
        MLPAutoencoder((8, 8), dropout=0.1),
        MLPAutoencoder((8, 8), activation="gelu"),
        ConvAutoencoder((8, 8)),
    ],
    ids=["batch_norm", "dropout", "gelu", "conv"],
)
def test_other_models_use_autograd(model):
    assert MLPStep.for_model(model) is None
