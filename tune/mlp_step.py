"""Closed-form training step for plain MLP autoencoders: the same math as autograd, less overhead.

At batch 32 an MLP step is a few small GEMMs; PyTorch's autograd engine then costs about as much
as the arithmetic (graph recording, a dozen backward nodes, gradient accumulation). For the plain
MLP (Linear layers with ReLU / LeakyReLU / Tanh, Sigmoid output, no batch norm, no dropout: the
first document's network and most of its variations) this step runs the forward pass and writes
each gradient straight into the parameter's `.grad` (the flat buffer Adam reads), using the very
backward kernels autograd would call. Everything else falls back to autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from models.mlp import MLPAutoencoder

_aten = torch.ops.aten


def _act_backward(act: nn.Module | None, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """dL/dz from dL/da for a = act(z), computed from the activation's output a."""
    if act is None:
        return g
    if isinstance(act, nn.ReLU):
        return _aten.threshold_backward(g, a, 0.0)
    if isinstance(act, nn.LeakyReLU):
        return _aten.leaky_relu_backward(g, a, act.negative_slope, True)
    if isinstance(act, nn.Tanh):
        return _aten.tanh_backward(g, a)
    return _aten.sigmoid_backward(g, a)  # nn.Sigmoid


def _inplace(act: nn.Module | None):
    """The activation applied in place (z is a fresh addmm output nobody else holds)."""
    if act is None:
        return None
    if isinstance(act, nn.ReLU):
        return torch.relu_
    if isinstance(act, nn.LeakyReLU):
        slope = act.negative_slope
        return lambda z: torch.nn.functional.leaky_relu_(z, slope)
    if isinstance(act, nn.Tanh):
        return torch.tanh_
    return torch.sigmoid_  # nn.Sigmoid


class MLPStep:
    """loss = MSE(model(x), x) with all parameter gradients written into `.grad` (not accumulated)."""

    SUPPORTED = (nn.ReLU, nn.LeakyReLU, nn.Tanh)

    def __init__(self, layers: list[tuple[nn.Linear, nn.Module | None]]) -> None:
        self.layers = layers
        # W^T as views, made once: the parameters are updated in place, so the views stay current
        # (building them per step costs three dispatcher calls per layer).
        self.weights_t = [lin.weight.t() for lin, _ in layers]
        self.inplace = [_inplace(act) for _, act in layers]

    @classmethod
    def for_model(cls, model: nn.Module) -> MLPStep | None:
        """The fast step for a plain MLPAutoencoder, or None (use autograd) for anything else."""
        if not isinstance(model, MLPAutoencoder):
            return None
        modules = [*model.encoder, *model.decoder]
        layers: list[tuple[nn.Linear, nn.Module | None]] = []
        for m in modules:
            if isinstance(m, nn.Linear):
                layers.append((m, None))
            elif isinstance(m, (*cls.SUPPORTED, nn.Sigmoid)) and layers and layers[-1][1] is None:
                layers[-1] = (layers[-1][0], m)
            else:  # batch norm, dropout, GELU/ELU/SiLU, ...: autograd handles them
                return None
        if not isinstance(layers[-1][1], nn.Sigmoid):
            return None
        return cls(layers)

    @torch.no_grad()
    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        # xb: [B, 1, H, W] -> a_0: [B, H*W]; a_i = act_i(a_{i-1} W_i^T + b_i); a_L = x_hat
        x = xb.reshape(len(xb), -1)
        acts = [x]
        for (lin, _), wt, act_ in zip(self.layers, self.weights_t, self.inplace, strict=True):
            z = torch.addmm(lin.bias, acts[-1], wt)
            acts.append(z if act_ is None else act_(z))  # in place: backward needs only the output
        diff = acts[-1] - x
        loss = torch.dot(diff.view(-1), diff.view(-1)) / diff.numel()
        g = diff.mul_(2.0 / diff.numel())  # dL/dx_hat of the mean squared error
        for i in range(len(self.layers) - 1, -1, -1):
            lin, act = self.layers[i]
            g = _act_backward(act, g, acts[i + 1])  # [B, out]
            torch.mm(g.t(), acts[i], out=lin.weight.grad)  # [out, in]
            torch.sum(g, 0, out=lin.bias.grad)  # [out]
            if i:
                g = torch.mm(g, lin.weight)  # dL/da_{i-1}: [B, in]
        return loss
