"""Independent float64 references: plain autograd, no chunking, no torch.func."""

from __future__ import annotations

import torch
from torch import nn


def flat_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def dense_hessian(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn=None
) -> torch.Tensor:
    """Explicit Hessian of the mean loss, row by row with double backward."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = flat_params(model)
    loss = loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    h = jacobian_rows(torch.cat([g.reshape(-1) for g in grads]), params).detach()
    return (h + h.T) / 2


def jacobian_rows(values: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """[len(values), p]: the gradient of each entry of a flat vector in the flat parameters."""
    rows = []
    for i in range(values.numel()):
        row = torch.autograd.grad(values[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [(r if r is not None else torch.zeros_like(p)).reshape(-1) for r, p in zip(row, params)]
            )
        )
    return torch.stack(rows)


def dense_gauss_newton(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn=None
) -> torch.Tensor:
    """Explicit Gauss–Newton matrix Jᵀ H_z J of the mean loss: J the Jacobian of every output of
    the batch in the parameters, row by row; H_z the loss's Hessian in those outputs, by double
    backward with the outputs as a leaf."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = flat_params(model)
    outputs = model(inputs)
    jacobian = jacobian_rows(outputs.reshape(-1), params)
    z = outputs.detach().requires_grad_(True)
    (gz,) = torch.autograd.grad(loss_fn(z, targets), z, create_graph=True)
    hz = jacobian_rows(gz.reshape(-1), [z])
    g = jacobian.T @ hz @ jacobian
    return ((g + g.T) / 2).detach()


def dense_gradient(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn=None
) -> torch.Tensor:
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = flat_params(model)
    grads = torch.autograd.grad(loss_fn(model(inputs), targets), params)
    return torch.cat([g.reshape(-1) for g in grads]).detach()


def label_log_odds(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_i log p_y − log(1 − p_y) over a batch, from the softmax (the margin self-influence measures)."""
    p = torch.softmax(outputs, dim=1).gather(1, targets[:, None])[:, 0]
    return (torch.log(p) - torch.log1p(-p)).sum()


def reference_influence(method, h, g, index, damping, h_target=None, fraction=0.0):
    """The four variants by dense linear algebra (numpy-free, float64, pseudo-inverses)."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    if method == "if":
        return (torch.linalg.pinv(h + damping * eye) @ g)[index]
    if method == "fif":
        sub = h[index][:, index]
        return (
            torch.linalg.pinv(sub + damping * torch.eye(len(index), dtype=h.dtype, device=h.device))
            @ g[index]
        )
    if method == "gif":
        a = h[:, index]
        return torch.linalg.pinv(
            a.T @ a + damping * torch.eye(len(index), dtype=h.dtype, device=h.device)
        ) @ (a.T @ g)
    z = torch.linalg.pinv(h + damping * eye) @ g
    z2 = fraction / (1 - fraction) * torch.linalg.pinv(h + damping * eye) @ ((h - h_target) @ z)
    return (z + z2)[index]
