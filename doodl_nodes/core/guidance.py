"""One-step classifier guidance: the baseline DOODL is compared against (paper Fig. 3A).

At every sampling step a one-step estimate of the clean latent is scored by a (non-noise-aware)
loss, and the gradient of that loss with respect to the *noisy* input ``z`` is added to the
denoising direction. In ComfyUI's sigma space (``z = x0 + sigma * eps``) the score of the noisy
marginal is ``(D(z) - z) / sigma**2``, so classifier guidance, which adds
``scale * grad_z log p(c | z)`` to the score, is a shift of the denoised output::

    D'(z, sigma) = D(z, sigma) - scale * sigma**2 * grad_z L(estimate(z, sigma))

with ``L = -log p(c | x0_hat)`` (any differentiable loss; the "one-step approximation" is
``p(c | z) ~ p(c | estimate(z))``). Equivalently the ODE direction ``d = (z - D') / sigma`` gains
``scale * sigma * grad_z L``, and in EPS terms ``eps' = eps + scale * sigma * grad_z L``, which is the
released DOODL baseline's ``noise_pred - sqrt(1 - alpha_bar) * cond_grad`` written in sigma space
(``sqrt(1 - alpha_bar) * grad_{x_vp} = sigma * grad_z``). ``scale`` is the paper's lambda (the
released ``grad_scale``).

Two estimates:

* the pack's (``estimate=None``): the guided call's own CFG x0 prediction ``D(z, sigma)``, one model
  call with grad per evaluation, for every model type;
* the released code's (:func:`official_estimate`): the x0 predicted from the *unconditional*
  epsilon, blended with the model input, ``x0_u * s + c_in * z * (1 - s)`` with
  ``s = sigma * c_in(sigma)`` (``sqrt(1 - alpha_bar)`` for EPS/V), a separate unconditional call with
  grad next to the CFG call. The released code steps with EDICT and guides both of its model calls.

The gradient flows only to ``z``: it is taken with ``torch.autograd.grad`` w.r.t. a detached copy of
``z``, so no ``.grad`` is ever written to model weights, and the returned tensor is detached (the
guidance term is a constant of the sampler, as in classifier-guided sampling). The functions open
``torch.inference_mode(False)`` and ``torch.enable_grad()`` themselves, so they work when called from
ComfyUI's ``inference_mode`` (inference tensors are cloned into normal ones first).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from .edict import InputScale, vp_input_scale

__all__ = ["one_step_guidance", "one_step_guided_denoiser", "official_estimate", "LossFn",
           "Denoiser", "Estimate"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: maps the x0 estimate (model space, ``(B, ...)``) to a scalar or per-sample ``(B,)`` loss
LossFn = Callable[[torch.Tensor], torch.Tensor]
#: ``estimate(z, sigma)``: the latent the loss scores, differentiable w.r.t. ``z``
Estimate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def official_estimate(uncond_denoise: Denoiser, input_scale: Optional[InputScale] = None) -> Estimate:
    """The released baseline's scored latent: ``x0_u * s + c_in * z * (1 - s)``, ``s = sigma * c_in``,
    where ``x0_u = uncond_denoise(z, sigma)`` (the x0 of the unconditional prediction) and
    ``c_in * z`` the model input (the alpha-space latent for EPS/V; ``input_scale`` defaults to
    :func:`~doodl_nodes.core.edict.vp_input_scale`)."""
    c_in_of = vp_input_scale if input_scale is None else input_scale

    def estimate(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_in = _broadcast_sigma(c_in_of(sigma), z)
        s = _broadcast_sigma(sigma, z) * c_in
        return uncond_denoise(z, sigma).to(z.dtype) * s + c_in * z * (1 - s)

    return estimate


def one_step_guidance(denoise: Denoiser, loss_fn: LossFn, z: torch.Tensor, sigma: torch.Tensor,
                      scale: float, estimate: Optional[Estimate] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One guided denoiser evaluation at ``(z, sigma)``.

    Returns ``(guided, denoised, loss)``: ``guided = denoised - scale * sigma**2 * grad_z L`` (the
    dtype and device of ``denoise``'s output), ``denoised = D(z, sigma)``, and ``loss`` the per-sample
    or scalar loss as ``loss_fn`` returned it; all three detached. ``L`` scores ``estimate(z, sigma)``
    (default: ``denoised`` itself, from the same model call). A per-sample loss is summed
    before differentiating, so each sample receives the gradient of its own loss (for a denoiser
    that treats batch rows independently). ``scale == 0`` returns ``D`` unchanged without calling
    ``loss_fn`` at all (``loss`` is then ``None``).
    """
    if not isinstance(sigma, torch.Tensor):
        sigma = torch.tensor(float(sigma), dtype=z.dtype, device=z.device)
    with torch.inference_mode(False):
        # inference tensors (ComfyUI) cannot be saved for backward: clone them into normal ones
        z_in = z.detach().clone()
        sig = sigma.detach().clone()
        if scale == 0:
            with torch.no_grad():
                denoised = denoise(z_in, sig)
            return denoised.detach(), denoised.detach(), None
        if estimate is not None:
            with torch.no_grad():
                denoised = denoise(z_in, sig)
        with torch.enable_grad():
            z_in.requires_grad_(True)
            if estimate is None:
                denoised = scored = denoise(z_in, sig)
            else:
                scored = estimate(z_in, sig)
            loss = loss_fn(scored)
            if loss.dim() > 1 or (loss.dim() == 1 and loss.shape[0] != z.shape[0]):
                raise ValueError(f"loss_fn must return a scalar or a per-sample (B,) loss; got shape "
                                 f"{tuple(loss.shape)} for a batch of {z.shape[0]}")
            (grad,) = torch.autograd.grad(loss.sum(), z_in)
        shift = _broadcast_sigma(sig, grad).pow(2) * grad
        guided = denoised.detach() - scale * shift.to(denoised.dtype)
    return guided, denoised.detach(), loss.detach()


def one_step_guided_denoiser(denoise: Denoiser, loss_fn: LossFn, scale: float, *,
                             on_step: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], None]] = None,
                             estimate: Optional[Estimate] = None) -> Denoiser:
    """Wrap a denoiser ``denoise(z, sigma) -> x0`` into its one-step classifier-guided version.

    The result is a denoiser with the same signature, usable wherever a denoiser is (e.g.
    ``edict_sample``); see the module docstring for the formula and conventions. ``on_step(sigma,
    loss)``, if given, is called after each evaluation with the (detached) loss, e.g. for logging
    (``loss`` is ``None`` when ``scale == 0``, where ``loss_fn`` is never called).
    ``scale = 0`` reproduces ``denoise`` exactly. ``estimate``: see :func:`one_step_guidance`.
    """
    scale = float(scale)

    def guided_denoise(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        guided, _, loss = one_step_guidance(denoise, loss_fn, z, sigma, scale, estimate)
        if on_step is not None:
            on_step(sigma, loss)
        return guided

    return guided_denoise


def _broadcast_sigma(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 0-d sigma, or a per-sample ``(B,)`` one, shaped to broadcast against ``like``."""
    sigma = sigma.to(like.dtype)
    if sigma.dim() == 0:
        return sigma
    if sigma.dim() == 1 and sigma.shape[0] == like.shape[0]:
        return sigma.reshape(-1, *([1] * (like.dim() - 1)))
    if sigma.numel() == 1:
        return sigma.reshape(())
    raise ValueError(f"sigma must be 0-d or (B,), got shape {tuple(sigma.shape)} for a batch of "
                     f"{like.shape[0]}")
