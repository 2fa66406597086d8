"""Train an autoencoder on images held as one tensor on the device, and embed data with it.

No DataLoader: the whole split lives on the device as float32 [N, 1, H, W] and each epoch is a
seeded permutation cut into index slices (a DataLoader's per-batch collation is overhead at
batch 32).
All parameters and gradients live in one flat buffer each, so Adam is one fused kernel over one
tensor instead of one launch per layer: at batch 32 the per-step overhead, not the arithmetic,
dominates on a CPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from tune.mlp_step import MLPStep

log = logging.getLogger(__name__)

EVAL_BATCH = 512  # inference batch: larger ones fall out of cache for conv models on the CPU
# On CUDA, replay each training step as one CUDA graph (set to 0 to run the steps eagerly).
CUDA_GRAPHS = os.environ.get("CLUSTERTUNE_CUDA_GRAPHS", "1") != "0"


class DivergedError(RuntimeError):
    """The training loss became NaN or inf (at 1-based `epoch`)."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def pick_device(use_gpu: bool | None = None) -> torch.device:
    """CUDA when present (and not refused), else CPU."""
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [0, 1] on `device` (converted on the device)."""
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # arrays from Ray's object store are read-only views
        images = images.copy()
    x = torch.from_numpy(images).to(device)
    return x.unsqueeze(1).float().div_(255.0)


def _flatten_parameters(model: nn.Module) -> nn.Parameter:
    """Re-home every parameter and its gradient as views of two flat buffers; returns the flat param.

    The optimiser then sees one tensor; autograd accumulates into the gradient views in place.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    ref = params[0]
    flat = torch.empty(sum(p.numel() for p in params), dtype=ref.dtype, device=ref.device)
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        # as_strided keeps each parameter's own layout (e.g. channels_last conv weights)
        view = flat[offset : offset + n].as_strided(p.shape, p.stride())
        view.copy_(p.data)
        p.data = view
        p.grad = grad[offset : offset + n].as_strided(p.shape, p.stride())
        offset += n
    flat_param = nn.Parameter(flat)
    flat_param.grad = grad
    return flat_param


def use_channels_last(model: nn.Module) -> nn.Module:
    """Conv models train faster on the CPU in channels_last (oneDNN's native layout, and
    max-pooling stops being the bottleneck); for [N, 1, H, W] inputs the layout is the same memory."""
    if any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def adam_step(opt: torch.optim.Adam, flat: nn.Parameter) -> None:
    """`opt.step()` for the one flat parameter, minus the per-call bookkeeping around the kernel.

    At batch 32, Optimizer.step's hooks, profiler scope and state checks and the functional
    wrapper's grouping by device cost more than the fused kernel itself on a CPU; this does what
    they end in (step += 1, then the fused Adam kernel) with the same state tensors, so the result
    is identical to opt.step() (tests/test_training.py checks it bit for bit). Also capturable in
    a CUDA graph: the step count lives on the device.
    """
    state = opt.state.get(flat)
    if not state:  # the first step creates the state
        opt.step()
        return
    g = opt.param_groups[0]
    state["step"].add_(1)
    torch._fused_adam_(
        [flat],
        [flat.grad],
        [state["exp_avg"]],
        [state["exp_avg_sq"]],
        [],
        [state["step"]],
        amsgrad=False,
        lr=g["lr"],
        beta1=g["betas"][0],
        beta2=g["betas"][1],
        weight_decay=g["weight_decay"],
        eps=g["eps"],
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float
) -> tuple[torch.optim.Adam, nn.Parameter]:
    """Adam over the model's flattened parameters (fused kernel when the device supports it)."""
    flat = _flatten_parameters(model)
    opt = torch.optim.Adam([flat], lr=lr, weight_decay=weight_decay, fused=True)
    return opt, flat


@torch.no_grad()
def reconstruction_loss(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Mean squared error over all pixels of `x` [N, 1, H, W], in eval mode (dropout off)."""
    if len(x) == 0:
        return math.nan
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        total += nn.functional.mse_loss(model(xb), xb, reduction="sum").item()
    model.train(was_training)
    return total / x.numel()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Latent codes [N, latent_dim] of `x` [N, 1, H, W], in eval mode."""
    was_training = model.training
    model.eval()
    # x[:1] when x is empty: encode() still runs once, so the empty result has the latent width
    parts = [model.encode(x[s : s + batch_size]) for s in range(0, max(len(x), 1), batch_size)]
    model.train(was_training)
    return torch.cat(parts)[: len(x)]


class GraphedStep:
    """One full training step (gather, forward, backward, Adam, loss sum) as a replayable CUDA graph.

    At batch 32 a GPU step is a few dozen tiny kernels and the launch overhead dominates; a graph
    replays them with one launch. Only full batches are replayed: the epoch's last, shorter batch
    runs eagerly through the same `body`. Capturing needs warm-up steps, which move the weights,
    Adam's state, batch-norm statistics and the RNG: `graphed_or_eager` snapshots all of it first
    and restores it after, so training is the same sequence of updates as without the graph.
    """

    def __init__(
        self, body: Callable[[torch.Tensor], None], batch_size: int, device: torch.device
    ) -> None:
        self.body = body
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                body(self.idx)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            body(self.idx)

    def __call__(self, index: torch.Tensor) -> None:
        if len(index) == len(self.idx):
            self.idx.copy_(index)
            self.graph.replay()
        else:
            self.body(index)


def use_cuda_graph(x_train: torch.Tensor) -> bool:
    """Replay training steps as CUDA graphs: on CUDA unless CLUSTERTUNE_CUDA_GRAPHS=0."""
    return x_train.is_cuda and CUDA_GRAPHS


def graphed_or_eager(
    body: Callable[[torch.Tensor], None],
    x_train: torch.Tensor,
    batch_size: int,
    model: nn.Module,
    opt: torch.optim.Adam,
    flat: nn.Parameter,
) -> Callable[[torch.Tensor], None]:
    """`body` captured as a GraphedStep, or `body` itself (with a warning) where capture fails,
    e.g. for an op that cannot be captured. Either way the state the warm-up and capture steps
    moved is restored, so training is unchanged."""
    _init_adam_state(opt, flat)  # capture needs Adam's state tensors to exist already
    saved = _snapshot(model, opt, flat)
    try:
        step = GraphedStep(body, batch_size, x_train.device)
    except Exception as e:  # noqa: BLE001 - any capture failure: run the same steps eagerly
        log.warning("CUDA graph capture failed (%s); training with eager steps", e)
        step = body
    if x_train.is_cuda:  # the warm-up ran on a side stream
        torch.cuda.synchronize(x_train.device)
    _restore(saved, model, opt, flat)
    return step


def _snapshot(model: nn.Module, opt: torch.optim.Adam, flat: nn.Parameter) -> dict[str, Any]:
    state = opt.state[flat]
    return {
        "flat": flat.detach().clone(),
        "buffers": [b.detach().clone() for b in model.buffers()],
        "adam": {k: v.clone() for k, v in state.items()},
        # the training device's RNG (dropout)
        "rng": torch.cuda.get_rng_state(flat.device) if flat.is_cuda else torch.get_rng_state(),
    }


def _restore(saved: dict[str, Any], model: nn.Module, opt: torch.optim.Adam, flat: nn.Parameter):
    with torch.no_grad():
        flat.copy_(saved["flat"])
        for b, v in zip(model.buffers(), saved["buffers"], strict=True):
            b.copy_(v)
        for k, v in saved["adam"].items():
            opt.state[flat][k].copy_(v)
    if flat.is_cuda:
        torch.cuda.set_rng_state(saved["rng"], flat.device)
    else:
        torch.set_rng_state(saved["rng"])


def _init_adam_state(opt: torch.optim.Adam, flat: nn.Parameter) -> None:
    """Create Adam's state (zero moments, step 0) without taking a step, as its first step would."""
    if opt.state.get(flat):
        return
    flat.grad.zero_()
    saved = flat.detach().clone()
    opt.step()  # creates the state tensors (on the device, as the fused kernel wants them)...
    with torch.no_grad():  # ...then undo that step: zero moments, step 0, weights unchanged
        flat.copy_(saved)
        for v in opt.state[flat].values():
            v.zero_()


def training_state(
    model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, history: list[dict]
) -> dict[str, Any]:
    """What resumes a training loop exactly: weights, optimiser, shuffle and dropout RNGs, history."""
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "history": list(history),
    }


def restore_training(
    state: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator
) -> list[dict]:
    """Put `training_state`'s state back (weights copied in place: flat views survive); returns
    the history."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    if torch.cuda.is_available() and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


def train_autoencoder(
    model: nn.Module,
    x_train: torch.Tensor,
    x_val: torch.Tensor | None,
    *,
    lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    seed: int,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, float], Callable[[], dict[str, Any]]], None] | None = None,
) -> list[dict[str, float]]:
    """Adam + MSE on `x_train` [N, 1, H, W] (already on the model's device); returns the history.

    Deterministic for a seed: one generator drives the shuffles, the global RNG (dropout) is seeded
    too, and both are part of the resumable state. `resume` is a dict from the `state()` callable
    handed to `on_epoch(record, state)` after every epoch; record = {"epoch", "train_loss",
    "val_loss"} (val_loss NaN without validation data). Raises DivergedError on a NaN/inf loss.
    """
    model.train()
    use_channels_last(model)
    if x_train.is_cuda:  # cuDNN's default conv backward sums with atomics: not repeatable
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    opt, flat = make_optimizer(model, lr, weight_decay)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    torch.manual_seed(seed)
    history: list[dict[str, float]] = []
    if resume is not None:
        history = restore_training(resume, model, opt, gen)

    def state() -> dict[str, Any]:
        return training_state(model, opt, gen, history)

    fast_step = MLPStep.for_model(model)  # closed-form gradients for the plain MLP, else autograd
    n = len(x_train)
    total = torch.zeros((), device=x_train.device)  # the epoch's summed loss (one tensor: graphs)

    def body(index: torch.Tensor) -> None:
        xb = x_train[index]
        if fast_step is not None:
            loss = fast_step(xb)
        else:
            loss = nn.functional.mse_loss(model(xb), xb)
            flat.grad.zero_()
            loss.backward()
        adam_step(opt, flat)
        total.add_(loss.detach(), alpha=len(index))  # no .item() per step: it would sync a GPU

    step = body
    if use_cuda_graph(x_train) and n >= batch_size:
        step = graphed_or_eager(body, x_train, batch_size, model, opt, flat)
    for epoch in range(len(history) + 1, epochs + 1):
        order = torch.randperm(n, generator=gen).to(x_train.device)
        total.zero_()
        for start in range(0, n, batch_size):
            step(order[start : start + batch_size])
        train_loss = total.item() / n
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} at epoch {epoch} (lr={lr})", epoch)
        val_loss = reconstruction_loss(model, x_val) if x_val is not None else math.nan
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
        history.append(record)
        if on_epoch is not None:
            on_epoch(record, state)
    model.eval()
    return history
