"""Autoencoder training: learns, is deterministic for a seed, resumes exactly, stops on divergence."""

import math

import numpy as np
import pytest
import torch

from models.build import build_autoencoder
from tune.config import Autoencoder, ConvNet, MLPNet
from tune.data import load_dataset
from tune.training import (
    DivergedError,
    embed,
    images_to_tensor,
    reconstruction_loss,
    train_autoencoder,
)

MLP = Autoencoder("mlp", MLPNet((64, 32), "relu", batch_norm=True), latent_dim=10, dropout=0.1)
CONV = Autoencoder("conv", ConvNet((8, 8)), latent_dim=10, dropout=0.2)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", seed=0)
    return images_to_tensor(ds.x_train), images_to_tensor(ds.x_val)


def _train(cfg, x_tr, x_val, epochs=3, seed=0, **kw):
    torch.manual_seed(seed)
    model = build_autoencoder(cfg, (8, 8))
    hist = train_autoencoder(
        model,
        x_tr,
        x_val,
        lr=3e-3,
        weight_decay=1e-6,
        batch_size=32,
        epochs=epochs,
        seed=seed,
        **kw,
    )
    return model, hist


def test_images_to_tensor():
    x = images_to_tensor(np.array([[[0, 255], [51, 102]]], dtype=np.uint8))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))


@pytest.mark.parametrize("cfg", [MLP, CONV], ids=["mlp", "conv"])
def test_learns_and_is_deterministic(digits, cfg):
    x_tr, x_val = digits
    model, hist = _train(cfg, x_tr, x_val, epochs=5)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_loss"] < hist[0]["val_loss"]
    assert hist[-1]["val_loss"] == pytest.approx(reconstruction_loss(model, x_val))
    model2, hist2 = _train(cfg, x_tr, x_val, epochs=5)
    assert hist == hist2
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    z = embed(model, x_val)
    assert z.shape == (len(x_val), 10)
    assert not model.training


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(digits):
    x_tr, x_val = digits
    full, full_hist = _train(MLP, x_tr, x_val, epochs=4)
    saved = {}

    def keep(record, state):
        if record["epoch"] == 2:
            saved["state"] = state()

    _train(MLP, x_tr, x_val, epochs=2, on_epoch=keep)
    resumed, resumed_hist = _train(MLP, x_tr, x_val, epochs=4, seed=0, resume=saved["state"])
    assert resumed_hist == full_hist
    for p, q in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_divergence_raises(digits):
    x_tr, x_val = digits
    torch.manual_seed(0)
    model = build_autoencoder(MLP, (8, 8))
    with torch.no_grad():
        model.encoder[0].weight.fill_(math.nan)
    with pytest.raises(DivergedError, match="nan"):
        train_autoencoder(
            model, x_tr, x_val, lr=1e-3, weight_decay=0, batch_size=64, epochs=2, seed=0
        )


def test_no_validation_split(digits):
    x_tr, _ = digits
    _, hist = _train(MLP, x_tr, None, epochs=1)
    assert math.isnan(hist[0]["val_loss"])


def test_adam_step_equals_optimizer_step():
    from tune.training import adam_step, make_optimizer

    torch.manual_seed(0)
    a = build_autoencoder(MLP, (8, 8))
    b = build_autoencoder(MLP, (8, 8))
    b.load_state_dict(a.state_dict())
    opt_a, flat_a = make_optimizer(a, 1e-2, 1e-4)
    opt_b, flat_b = make_optimizer(b, 1e-2, 1e-4)
    for i in range(5):
        g = torch.randn_like(flat_a) * (i + 1)
        flat_a.grad.copy_(g)
        flat_b.grad.copy_(g)
        adam_step(opt_a, flat_a)
        opt_b.step()
    torch.testing.assert_close(flat_a, flat_b, rtol=0, atol=0)
    assert opt_a.state[flat_a]["step"] == opt_b.state[flat_b]["step"] == 5


def _documents_loop(model, x, *, lr, weight_decay, batch_size, epochs, seed):
    """The source documents' training, written plainly: nn.Module, autograd, torch.optim.Adam
    with its defaults, MSE; on train_autoencoder's batches (its documented seeded shuffles)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[order[start : start + batch_size]]
            loss = torch.nn.functional.mse_loss(model(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        losses.append(total / len(x))
    return losses


@pytest.mark.parametrize("activation", ["relu", "gelu"], ids=["doc1-hand-written", "autograd"])
def test_training_makes_the_documents_updates(digits, activation):
    """Whatever step train_autoencoder picks (the hand-written one for doc1's network, autograd +
    the flat fused Adam for the others), it makes the updates of the documents' plain loop with
    doc1's settings (batch 32, Adam lr 1e-3, weight decay 1e-8): same losses and weights after a
    few epochs, up to float rounding. A faster step that changed the training (another batch
    size, Adam variant, loss scale or update rule) fails here."""
    from tune.config import TrialConfig
    from tune.mlp_step import MLPStep
    from tune.space import load_space

    doc1 = TrialConfig.from_flat({**load_space("seeds").points[0], "mlp_activation": activation})
    t = doc1.training
    kw = {"lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size, "seed": 3}
    assert (kw["batch_size"], kw["lr"], kw["weight_decay"]) == (32, 1e-3, 1e-8)
    x_tr, _ = digits
    torch.manual_seed(0)
    ours = build_autoencoder(doc1.autoencoder, (8, 8))
    plain = build_autoencoder(doc1.autoencoder, (8, 8))
    plain.load_state_dict(ours.state_dict())
    assert (MLPStep.for_model(ours) is not None) == (activation == "relu")  # the path named
    hist = train_autoencoder(ours, x_tr, None, epochs=3, **kw)
    ref = _documents_loop(plain, x_tr, epochs=3, **kw)
    assert [h["train_loss"] for h in hist] == pytest.approx(ref, rel=1e-5, abs=0)
    for (name, p), q in zip(ours.named_parameters(), plain.parameters(), strict=True):
        # 1e-5: rounding (fused vs per-tensor Adam, closed-form vs autograd gradients) leaves
        # 2.4e-7 (relu) and 6e-8 (gelu) here; other updates part by far more: Adam eps 1e-7
        # 0.13, batch 33 0.12, torch.compile'd Adam (bias correction in float32) 4.8e-5. Longer
        # runs part by chance (bench/bench_step.py's docstring), so this stays at ~110 steps.
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


PLAIN_MLP = Autoencoder("mlp", MLPNet((32,), "relu", False), 10, 0.0)  # the closed-form step
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("cfg", [PLAIN_MLP, MLP, CONV], ids=["plain-mlp", "mlp-bn-dropout", "conv"])
def test_cuda_graph_training_matches_eager_and_resumes(digits, cfg, monkeypatch):
    """Replaying each step as a CUDA graph trains exactly like eager steps, and resumes exactly."""
    import tune.training as training

    x_tr, x_val = (x.cuda() for x in digits)

    def run(graphs, epochs=3, **kw):
        monkeypatch.setattr(training, "CUDA_GRAPHS", graphs)
        torch.manual_seed(0)
        torch.cuda.manual_seed_all(0)
        model = build_autoencoder(cfg, (8, 8)).cuda()
        kw = {"lr": 3e-3, "weight_decay": 1e-6, "batch_size": 32, "seed": 0, **kw}
        return model, train_autoencoder(model, x_tr, x_val, epochs=epochs, **kw)

    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda g: replays.append(1) or replay(g))
    eager, eager_hist = run(False)
    assert not replays
    graphed, graphed_hist = run(True)
    assert len(x_tr) % 32  # the last, shorter batch of each epoch runs eagerly
    assert len(replays) == 3 * (len(x_tr) // 32)  # every full batch of the 3 epochs, replayed
    # Same updates in the same order; cuBLAS/cuDNN may pick other kernels under capture, so the
    # float sums can differ in the last bits.
    for a, b in zip(eager_hist, graphed_hist, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    for p, q in zip(eager.state_dict().values(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
    again, again_hist = run(True)
    assert again_hist == graphed_hist  # deterministic with graphs too
    saved = {}

    def keep(record, state):
        if record["epoch"] == 2:
            saved["state"] = state()

    run(True, epochs=2, on_epoch=keep)
    resumed, resumed_hist = run(True, resume=saved["state"])
    assert resumed_hist == graphed_hist
    for p, q in zip(graphed.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class CountingStep:
    """Stands in for GraphedStep on the CPU: runs the captured body for every batch, counting."""

    calls = 0

    def __init__(self, body, batch_size, device) -> None:
        self.body = body

    def __call__(self, index):
        CountingStep.calls += 1
        self.body(index)


class FailingCapture:
    """A capture that fails after its warm-up steps moved weights, Adam, RNG and the loss sum."""

    def __init__(self, body, batch_size, device) -> None:
        for _ in range(3):
            body(torch.arange(batch_size))
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.mark.parametrize("cfg", [PLAIN_MLP, MLP], ids=["plain-mlp", "mlp-bn-dropout"])
def test_graph_step_is_wired_in_and_a_failed_capture_falls_back_to_eager(
    digits, cfg, monkeypatch, caplog
):
    """Where CUDA graphs apply, every batch goes through the captured step (the graph); a capture
    that fails leaves no trace: training is bit for bit the eager one."""
    import tune.training as training

    x_tr, x_val = digits

    def run(step_class=None):
        if step_class is not None:
            monkeypatch.setattr(training, "use_cuda_graph", lambda x: True)
            monkeypatch.setattr(training, "GraphedStep", step_class)
        torch.manual_seed(0)
        model = build_autoencoder(cfg, (8, 8))
        kw = {"lr": 3e-3, "weight_decay": 1e-6, "batch_size": 32, "seed": 0, "epochs": 2}
        return model, train_autoencoder(model, x_tr, x_val, **kw)

    eager, eager_hist = run()
    CountingStep.calls = 0
    graphed, graphed_hist = run(CountingStep)
    assert CountingStep.calls == 2 * math.ceil(len(x_tr) / 32)
    assert graphed_hist == eager_hist
    with caplog.at_level("WARNING", logger="tune.training"):
        fallback, fallback_hist = run(FailingCapture)
    assert "CUDA graph capture failed" in caplog.text
    assert fallback_hist == eager_hist
    for model in (graphed, fallback):
        for p, q in zip(eager.state_dict().values(), model.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
