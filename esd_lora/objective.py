"""The ESD objective as pure functions of tensors.

All three functions work in the model's own prediction space (epsilon or v): the ESD target is an affine
combination of predictions at the same ``x_t`` whose weights sum to one, and both epsilon and v are affine in
each other for a fixed ``x_t``, so building the target from v-predictions is the same target, expressed in v.
``to_epsilon`` exists to check exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def esd_target(e0: torch.Tensor, ep: torch.Tensor, eta: float) -> torch.Tensor:
    """The ESD target of the paper, ``e0 - eta * (ep - e0)``: negative guidance away from the concept.

    ``e0`` is the frozen prediction without the concept (unconditional, or the ``erase_from`` prompt) and
    ``ep`` the frozen prediction with it. Note the authors' later code writes ``ep - eta * (ep - e0)``, which
    equals this form with ``eta`` one larger.
    """
    return e0 - eta * (ep - e0)


def esd_loss(en: torch.Tensor, e0: torch.Tensor, ep: torch.Tensor, eta: float) -> torch.Tensor:
    """Mean squared error between the trained model's prediction ``en`` and the ESD target, in fp32."""
    target = esd_target(e0.detach().float(), ep.detach().float(), eta)
    return F.mse_loss(en.float(), target)


def to_epsilon(pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float,
               prediction_type: str) -> torch.Tensor:
    """Convert a model output to the noise it predicts (``x_t = sqrt(ab) x0 + sqrt(1-ab) eps``)."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        alpha_bar = torch.as_tensor(alpha_bar, dtype=pred.dtype, device=pred.device)
        return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * pred
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: expected 'epsilon' or 'v_prediction'")


def preservation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error that keeps the trained model's prediction for a preserved prompt at the frozen one."""
    return F.mse_loss(student.float(), teacher.detach().float())
