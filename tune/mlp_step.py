"""Closed-form training step for plain MLP autoencoders: the same math as autograd, less overhead.

At batch 32 an MLP step is a few small GEMMs; PyTorch's autograd engine then costs about as much
as the arithmetic (graph recording, a dozen backward nodes, gradient accumulation). For the plain
MLP (Linear layers with ReLU / LeakyReLU / Tanh, Sigmoid output, no batch norm, no dropout: the
first document's network and most of its variations) this step runs the forward pass and writes
each gradient straight into the parameter's `.grad` (the flat buffer Adam reads), using the very
backward kernels autograd would call. Everything else falls back to autograd.

The joint fine-tuning stage (tune/finetune.py) adds a clustering term on the code z; `joint` takes
its closed-form gradient as a hook at the code layer and adds it to the gradient flowing into the
encoder there, so that stage gets the same speed-up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from models.mlp import MLPAutoencoder

_aten = torch.ops.aten


def _backward_of(
    act: nn.Module | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """(dL/da, a) -> dL/dz for a = act(z), computed from the activation's output a; None = identity."""
    if act is None:
        return None
    if isinstance(act, nn.ReLU):
        return lambda g, a: _aten.threshold_backward(g, a, 0.0)
    if isinstance(act, nn.LeakyReLU):
        slope = act.negative_slope
        return lambda g, a: _aten.leaky_relu_backward(g, a, slope, True)
    if isinstance(act, nn.Tanh):
        return _aten.tanh_backward
    return _aten.sigmoid_backward  # nn.Sigmoid


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

    def __init__(self, layers: list[tuple[nn.Linear, nn.Module | None]], n_encoder: int) -> None:
        self.layers = layers
        # Everything a step needs, looked up once: at batch 32 a step is short enough that each
        # dispatcher call or attribute lookup is a visible share of it. W^T are views: the
        # parameters are updated in place, so the views stay current; the gradients are views
        # of the optimiser's flat buffer.
        self.forward_plan = [(lin.bias, lin.weight.t(), _inplace(act)) for lin, act in layers]
        backward_plan = [
            (i, lin.weight, lin.weight.grad, lin.bias.grad, _backward_of(act))
            for i, (lin, act) in reversed(list(enumerate(layers)))
        ]
        # The code z is acts[n_encoder] (the encoder's output, after its activation if it has one);
        # the backward pass is cut there so that `joint` can add the clustering term's dL/dz.
        self.code = n_encoder
        self.decoder_plan = backward_plan[: len(layers) - n_encoder]
        self.encoder_plan = backward_plan[len(layers) - n_encoder :]

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
        return cls(layers, sum(isinstance(m, nn.Linear) for m in model.encoder))

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        """Pre-training: the reconstruction loss, its gradients written into `.grad`."""
        return self.joint(xb, None)[0]

    @torch.no_grad()
    def joint(
        self,
        xb: torch.Tensor,
        code_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reconstruction loss, clustering loss or None) with every gradient in `.grad`.

        code_grad(z) -> (clustering loss, dz): the clustering term's value and its gradient wrt
        the code z [B, d], already weighted as it enters the total loss; it writes the gradients
        of its own parameters (the centres) itself. It must not change z in place."""
        # xb: [B, 1, H, W] -> a_0: [B, H*W]; a_i = act_i(a_{i-1} W_i^T + b_i); a_L = x_hat
        x = xb.reshape(len(xb), -1)
        acts = [x]
        a = x
        for bias, weight_t, act_ in self.forward_plan:
            a = torch.addmm(bias, a, weight_t)  # [B, out]
            if act_ is not None:
                act_(a)  # in place: backward needs only the output
            acts.append(a)
        cluster = None
        if code_grad is not None:
            cluster, dz = code_grad(acts[self.code])  # dz: [B, d]
        diff = a - x
        flat = diff.view(-1)
        loss = torch.dot(flat, flat).div_(diff.numel())
        g = diff.mul_(2.0 / diff.numel())  # dL/dx_hat of the mean squared error
        g = _backward(g, acts, self.decoder_plan)  # -> dL/dz of the reconstruction: [B, d]
        if code_grad is not None:
            g.add_(dz)  # g is a fresh mm output: adding in place touches nothing else
        _backward(g, acts, self.encoder_plan)
        return loss, cluster


def _backward(g: torch.Tensor, acts: list[torch.Tensor], plan: list) -> torch.Tensor:
    """Backpropagate through `plan` (layers from the top down), writing their weight and bias
    gradients. g enters as dL/d(output of the plan's top layer); returns dL/d(input of its bottom
    layer), except below layer 0 (nothing needs dL/dx)."""
    for i, weight, weight_grad, bias_grad, act_backward in plan:
        if act_backward is not None:
            g = act_backward(g, acts[i + 1])  # [B, out]
        torch.mm(g.t(), acts[i], out=weight_grad)  # [out, in]
        torch.sum(g, 0, out=bias_grad)  # [out]
        if i:
            g = torch.mm(g, weight)  # dL/da_{i-1}: [B, in]
    return g
