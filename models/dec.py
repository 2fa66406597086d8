"""DEC's clustering layer (Xie et al., 2016; IDEC, Guo et al., 2017): Student's t soft assignment.

q_ij = (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha + 1) / 2), normalised over j (alpha = 1 in DEC).
Its argmax is the nearest centre, so the hard labels are those of a nearest-centre rule.
"""

import torch
from torch import nn


class ClusteringLayer(nn.Module):
    """k trainable centres mu [k, d]; forward gives the soft assignment q [B, k]."""

    def __init__(self, init_centers: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.centers = nn.Parameter(init_centers.clone())  # [k, d]
        self.alpha = alpha

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # z: [B, d] -> q: [B, k], rows sum to 1
        return self.assign(z)[1]

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 + d_ij / alpha, q_ij), both [B, k]: the first is what the closed-form gradient of
        tune/finetune.py needs besides q."""
        d = ((z[:, None, :] - self.centers[None, :, :]) ** 2).sum(-1)  # cdist's grad is NaN at 0
        return self._student_t(d)

    @torch.no_grad()
    def soft_assignment(self, z: torch.Tensor) -> torch.Tensor:
        """q [N, k] without autograd, for many codes at once (IDEC's target refresh): distances as
        ||z||^2 - 2 z.mu + ||mu||^2, a matrix product instead of the [N, k, d] differences
        (several times faster on a CPU); equal to forward(z) up to rounding."""
        c = self.centers
        d = torch.addmm((c * c).sum(1), z, c.t(), alpha=-2.0)  # [N, k]
        d.add_((z * z).sum(1, keepdim=True)).clamp_min_(0.0)
        return self._student_t(d)[1]

    def _student_t(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # d: squared distances [B, k] -> (1 + d / alpha, q), both [B, k]
        base = 1.0 + d / self.alpha
        q = base.pow(-(self.alpha + 1.0) / 2.0)
        return base, q / q.sum(dim=1, keepdim=True)
