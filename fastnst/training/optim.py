"""The optimisers a run can choose (``optim.name``): Adam, or Muon for the hidden convolutions with Adam for the rest.

Muon (Jordan et al. 2024) keeps a Nesterov momentum of each weight matrix's gradient and steps along its nearest
orthogonal matrix (same singular vectors, every singular value about 1), found by a few Newton-Schulz iterations.
Every direction of a layer's update then moves at the same rate, where Adam's moves along the gradient's few dominant
directions. Here a convolution's weight is the matrix ``out_channels x (in_channels * kh * kw)``. The first
convolution (reads RGB) and the last (writes RGB), the biases and the instance norms stay on Adam, as the Muon
authors keep embeddings, heads and vectors on it. Muon's step is scaled to an RMS of ``0.2 * lr`` per entry (Liu
et al. 2025, "Muon is scalable"), about Adam's, so one ``lr`` and one schedule serve both (docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam as adam_step

OPTIMIZERS = ("adam", "muon")

# Quintic Newton-Schulz coefficients (Jordan et al.): drive every singular value of a matrix of spectral norm <= 1
# into about [0.7, 1.2] in 5 steps, which is all the update needs.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Each matrix of ``g`` (``(m, n)`` or a batch ``(b, m, n)``) with its singular values pushed to about 1.

    Newton-Schulz in bfloat16, as Muon does: the update needs directions, not digits.
    """
    a, b, c = _NS_COEFFS
    x = g.to(torch.bfloat16)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # Frobenius norm >= spectral norm: the iteration's domain
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x if wide else x.mT).to(g.dtype)


class MuonAdam(torch.optim.Optimizer):
    """Muon for the param groups with ``muon=True``, Adam (torch.optim.adam.adam, Adam's own code) for the others.

    Every group takes ``lr`` (and an optional ``lr_scale`` the schedule keeps); Muon groups take ``momentum``
    (default 0.95, Nesterov), Adam groups ``betas`` and ``eps``. Muon parameters must be at least 2-D; all but the
    first dimension are flattened into the matrix that is orthogonalised. Matrices of one shape are orthogonalised
    as one batch (the classic network's five residual blocks hold ten 128 x 1152 kernels).
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.95,
    ) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "momentum": momentum, "muon": False}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon groups take weight matrices or convolution kernels (2-D or more), not vectors")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adam)(params, group)
        return loss

    def _muon(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        mu = group["momentum"]
        by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"].mul_(mu).add_(p.grad)
            by_shape.setdefault(p.shape, []).append((p, p.grad.add(buf, alpha=mu)))  # Nesterov
        for shape, pairs in by_shape.items():
            updates = torch.stack([u.reshape(shape[0], -1) for _, u in pairs])
            # An orthogonal m x n matrix has RMS 1/sqrt(max(m, n)): this scale makes the step's RMS 0.2 * lr.
            scale = 0.2 * math.sqrt(max(updates.shape[-2:]))
            for (p, _), o in zip(pairs, orthogonalise(updates)):
                p.add_(o.view_as(p), alpha=-group["lr"] * scale)

    def _adam(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        for p in params:
            state = self.state[p]
            if not state:  # torch.optim.Adam's state layout
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam_step(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
        )


def hidden_convolutions(net: nn.Module) -> list[nn.Conv2d]:
    """The network's convolutions except the first and the last (those that read and write RGB)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[1:-1]


def build_optimizer(net: nn.Module, name: str, lr: float, betas: tuple[float, float], norm_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """The optimiser of a run: ``adam`` or ``muon``; the instance norms learn at ``norm_lr_scale`` times ``lr``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; available: {', '.join(OPTIMIZERS)}")
    if name == "adam" and norm_lr_scale == 1.0:  # one group in net.parameters() order, as earlier checkpoints hold it
        return torch.optim.Adam(net.parameters(), lr=lr, betas=betas)
    norms = [p for m in net.modules() if isinstance(m, nn.InstanceNorm2d) for p in m.parameters()]
    hidden = [m.weight for m in hidden_convolutions(net)] if name == "muon" else []
    taken = {id(p) for p in norms} | {id(p) for p in hidden}
    rest = [p for p in net.parameters() if id(p) not in taken]
    groups: list[dict[str, Any]] = []
    if hidden:
        groups.append({"params": hidden, "lr": lr, "lr_scale": 1.0, "muon": True})
    # Instance norms' scales and shifts in a group of their own when norm_lr_scale != 1: Adam moves every parameter by
    # about lr per step, and a norm scale (about 1) is larger than a conv weight (about 0.2).
    if norm_lr_scale == 1.0:
        groups.append({"params": rest + norms, "lr": lr, "lr_scale": 1.0})
    else:
        groups.append({"params": rest, "lr": lr, "lr_scale": 1.0})
        groups.append({"params": norms, "lr": lr * norm_lr_scale, "lr_scale": norm_lr_scale})
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return MuonAdam(groups, lr=lr, betas=betas)
