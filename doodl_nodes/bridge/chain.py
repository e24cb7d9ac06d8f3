"""Run our own code inside ComfyUI's guider, with a denoiser made from MODEL + CONDITIONING + cfg.

``run_in_guider`` builds a ``CFGGuider`` on a *clone* of the model and passes it a
``comfy.samplers.Sampler`` whose ``sample`` calls back into our function (the shape of ComfyUI's own
``TrainSampler``). The guider does everything architecture-specific: loading the model (and the
VAE/scorer models attached with ``set_additional_models``), turning CONDITIONING into model inputs
(SD1 cross-attention, SDXL ``y``, Flux guidance, ...), batching cond and uncond into one call and
applying CFG (skipping uncond at cfg 1), model patches and wrappers. Inside, ``ChainModel.denoise``
is ComfyUI's denoiser ``D(z, sigma)`` in model (``process_in``) space.

Autograd inside ComfyUI (docs/maintainers/comfyui-internals.md §1): we leave ``inference_mode``, clone the conds, and,
when gradients are needed, make the loaded weights autograd-safe and frozen every run.

Speed: on CUDA the model call is recorded and replayed as CUDA graphs where safe
(``cuda_graphs.py``), and such a run holds the model channels-last end to end with fused kernels
(``fast_unet.py``); both measured in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

import comfy.model_management
import comfy.samplers

from .autograd import clone_tensor_tree, make_autograd_safe
from .cuda_graphs import (GraphedGuider, channels_last_enabled, cuda_graphs_enabled, fused_kernels_enabled,
                          graph_blockers, torch_compile_enabled)
from .fast_unet import fast_unet
from .inplace_blocks import add_differentiable_blocks
from .model_checkpointing import add_model_checkpointing
from .safety import check_exactness_safe, check_gradient_safe, differentiable_attention_override

__all__ = ["ChainModel", "model_input_scale", "model_input_float32", "run_in_guider", "PRECISIONS",
           "model_fingerprint", "cuda_graphs_enabled", "torch_compile_enabled"]

PRECISIONS = ("bf16", "fp32")
log = logging.getLogger("doodl")


def model_fingerprint(base_model) -> str:
    """Identity of a loaded model: architecture, sampling, latent format and a weight checksum."""
    ms = base_model.model_sampling
    parts = [type(base_model).__name__, type(ms).__name__, type(base_model.latent_format).__name__]
    sig = getattr(ms, "sigmas", None)
    if isinstance(sig, torch.Tensor):
        parts.append(f"{float(sig[0]):.6g}-{float(sig[-1]):.6g}")
    params = [p for p in base_model.diffusion_model.parameters()]
    h = hashlib.sha1()
    for p in params[:2] + params[-2:]:
        with torch.inference_mode(False), torch.no_grad():
            h.update(f"{tuple(p.shape)}:{float(p.detach().double().sum()):.10e}".encode())
    parts.append(h.hexdigest()[:16])
    return "/".join(parts)


def model_input_float32(z: torch.Tensor) -> torch.Tensor:
    """A float64 EDICT state as the float32 model input, robust to the last bits of float64 rounding.

    The state is first rounded to 48 significant bits (Veltkamp's split with 2**5 + 1), then cast.
    A plain cast is discontinuous at float32 rounding ties, and states made of float32 values (a
    VAE-encoded latent, the model's float32 outputs) land exactly on ties: on flow models, whose
    input is the state itself, EDICT's last step forms ``2 * latent - denoised`` exactly, and the
    inverse pass, off by one float64 rounding, cast some of those elements the other way (the
    tiny Flux: 30 of 1024, a 1.5e-6 round trip instead of 1e-15). Rounding to 48 bits first puts
    both passes on the same tie; it changes the model input only for values within 2**-49 of a
    float32 tie. The gradient passes through unchanged.
    """
    c = z * 33.0
    r = c - (c - z)
    if torch.is_grad_enabled() and z.requires_grad:
        r = z + (r - z).detach()
    return r.to(torch.float32)


def model_input_scale(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """``c_in(sigma)``: the factor a model applies to a latent at ``sigma`` before its network
    (``model_sampling.calculate_input`` on ones, linear in the latent for every model_sampling
    ComfyUI ships), 0-d, in ``sigma``'s dtype and device. EDICT's second model call uses it
    (``core/edict.py``): EPS/V give ``1 / sqrt(1 + sigma**2)``, flow models 1."""
    s = sigma.detach().reshape(1)
    return model_sampling.calculate_input(s, torch.ones_like(s).reshape(1, 1)).reshape(())


@dataclass
class ChainModel:
    """What our code gets inside the guider: ComfyUI's denoiser and model objects."""

    model_wrap: Any                 # the CFGGuider (callable: x, sigma_vec, model_options, seed)
    extra_args: dict
    sigmas: torch.Tensor            # as given (device tensor)
    max_denoise: bool
    precision: str = "bf16"
    #: run the gradient pass under bf16 autocast (an fp16/fp32 model with precision "bf16")
    bf16_autocast: bool = field(default=False, init=False)
    #: the CUDA-graph replays of ``call_model`` (a ``cuda_graphs.GraphedGuider``), if in use
    graphs: Any = field(default=None, init=False, repr=False)

    @property
    def base_model(self):
        return self.model_wrap.inner_model

    @property
    def model_sampling(self):
        return self.base_model.model_sampling

    @property
    def latent_format(self):
        return self.base_model.latent_format

    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    def denoise(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D(z, sigma)`` with CFG; ``z`` in model space (any float dtype), ``sigma`` 0-d.

        The model is called in float32, like ComfyUI's samplers call it (a float64 input would
        push CFG and the model-sampling arithmetic into slow float64); the output is returned in
        ``z``'s dtype. The cast is deterministic and robust to float64 rounding at float32 ties
        (:func:`model_input_float32`), so EDICT stays exactly invertible.
        """
        comfy.model_management.throw_exception_if_processing_interrupted()
        z_in = model_input_float32(z) if z.dtype == torch.float64 else z
        s_in = sigma.reshape(1).to(device=z.device, dtype=z_in.dtype).expand(z.shape[0])
        grad = z.requires_grad and torch.is_grad_enabled()
        if self.graphs is not None:
            out = self.graphs(z_in, s_in, grad)
            if out is not None:
                return out.to(z.dtype)
        return self.call_model(z_in, s_in, grad).to(z.dtype)

    def call_model(self, z_in: torch.Tensor, s_in: torch.Tensor, grad: bool,
                   cache_enabled: bool = True, autocast: Optional[bool] = None) -> torch.Tensor:
        """The eager CFG model call through ComfyUI's guider (what the CUDA graphs record).
        ``autocast`` None: bf16 autocast on calls with grad when ``bf16_autocast``."""
        ctx = contextlib.nullcontext()
        if (self.bf16_autocast and grad) if autocast is None else autocast:
            ctx = torch.autocast(device_type=z_in.device.type, dtype=torch.bfloat16,
                                 cache_enabled=cache_enabled)
        with ctx:
            return self.model_wrap(z_in, s_in, **self.extra_args)

    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """``c_in(sigma)`` of this model (see :func:`model_input_scale`)."""
        return model_input_scale(self.model_sampling, sigma)

    def noise_scale(self, sigma: float) -> float:
        """Scale that makes unit-variance noise a latent at ``sigma`` (1 / c_in)."""
        return float(1.0 / self.input_scale(torch.tensor(float(sigma), dtype=torch.float64,
                                                         device=self.device)))

    def initial_latent(self, noise: torch.Tensor) -> torch.Tensor:
        """ComfyUI's starting latent for unit noise at ``sigmas[0]`` (as KSAMPLER builds it, in
        float32), returned as a float64 state on the model's device."""
        noise = noise.to(device=self.device, dtype=torch.float32)
        x = self.model_sampling.noise_scaling(self.sigmas[0].to(torch.float32), noise,
                                              torch.zeros_like(noise), self.max_denoise)
        return x.to(torch.float64)


class _CallbackSampler(comfy.samplers.Sampler):
    def __init__(self, fn: Callable[[ChainModel], Any], grad: bool, precision: str,
                 extra_modules: Sequence[torch.nn.Module], cuda_graphs: bool = False,
                 torch_compile: bool = False, bf16_copies: bool = True):
        self.fn = fn
        self.grad = grad
        self.precision = precision
        self.extra_modules = list(extra_modules)
        self.cuda_graphs = cuda_graphs
        self.torch_compile = torch_compile
        self.bf16_copies = bf16_copies
        self.result = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        with torch.inference_mode(False):
            # on the model's device once: ComfyUI would copy them at every call (a copy a CUDA graph
            # cannot record); clones, since inference-tensor conds cannot be saved for backward
            model_wrap.conds = clone_tensor_tree(model_wrap.conds, sigmas.device)
            extra_args = {k: v for k, v in extra_args.items() if k in ("model_options", "seed")}
            chain = ChainModel(model_wrap, extra_args, clone_tensor_tree(sigmas),
                               self.max_denoise(model_wrap, sigmas), self.precision)
            if self.grad:
                make_autograd_safe([model_wrap.inner_model] + self.extra_modules)
                chain.bf16_autocast = (self.precision == "bf16"
                                       and model_wrap.inner_model.get_dtype() != torch.bfloat16
                                       and model_wrap.inner_model.manual_cast_dtype != torch.bfloat16)
            if self.cuda_graphs:
                why = graph_blockers(model_wrap, extra_args, chain.device, grad=self.grad)
                if not why:
                    chain.graphs = GraphedGuider(
                        chain.call_model, chain.base_model, noise.shape, chain.device,
                        compile=self.torch_compile,
                        bf16_copies=self.bf16_copies and chain.bf16_autocast)
                elif chain.device.type == "cuda":
                    log.info("DOODL: CUDA graphs off for this run: %s", "; ".join(why))
            with self._layout(chain):
                try:
                    with contextlib.nullcontext() if self.grad else torch.no_grad():
                        self.result = self.fn(chain)
                finally:
                    if chain.graphs is not None:
                        log.debug("DOODL: CUDA graph counters of this run: %s", chain.graphs.stats)
                        chain.graphs.close()
                        chain.graphs = None
            return torch.zeros_like(noise)

    @contextlib.contextmanager
    def _layout(self, chain: ChainModel):
        """A graphed, uncompiled run holds the diffusion model channels-last with fused kernels
        (``fast_unet.py``) for the whole run, graphs and eager calls alike."""
        layout, fused = channels_last_enabled(), fused_kernels_enabled()
        if chain.graphs is None or self.torch_compile or not (layout or fused):
            yield
            return
        with fast_unet(chain.base_model.diffusion_model, layout, fused) as counts:
            chain.graphs.stats.update(counts)
            yield


def run_in_guider(model, positive, negative, cfg: float, sigmas: torch.Tensor,
                  latent_shape: Sequence[int], fn: Callable[[ChainModel], Any], *,
                  grad: bool = False, precision: str = "bf16", extra_patchers: Sequence = (),
                  extra_modules: Sequence[torch.nn.Module] = (), seed: int = 0,
                  what: str = "EDICT", cuda_graphs: Optional[bool] = None,
                  torch_compile: Optional[bool] = None, bf16_copies: bool = True,
                  model_checkpointing: bool = False) -> Any:
    """Call ``fn(chain)`` inside ComfyUI's guider for ``model`` and return what it returns.

    ``latent_shape`` is the model-space latent shape (used by the guider for memory estimates and
    size-dependent conds). With ``grad=True``: the gradient-safety checks run, the model and the
    ``extra_patchers`` (VAE, scorer models) are fully loaded, and the weights of the model and of
    ``extra_modules`` are made autograd-safe and frozen. ``precision`` picks the dtype of the
    differentiable pass: "bf16" (autocast on the gradient recomputation) or "fp32".
    ``cuda_graphs``: record and replay the model call as CUDA graphs where safe (None: the
    ``DOODL_CUDA_GRAPHS`` environment variable, default on); numbers are the same either way up to
    kernel-level floating-point differences. ``torch_compile``: compile the model before recording
    the graphs (None: ``DOODL_TORCH_COMPILE``, default off); used only together with the graphs.
    ``bf16_copies``: let the gradient graphs of an fp16/fp32 model run from bf16 copies of its
    weights (faster; 2 bytes per parameter more) instead of under bf16 autocast.
    ``model_checkpointing`` (with ``grad``): the diffusion model's blocks recompute their
    activations in the backward pass (``model_checkpointing.py``); the calls then run eagerly.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    (check_gradient_safe if grad else check_exactness_safe)(model, what)
    mp = model.clone()
    if grad:  # Flux: its blocks' in-place residual adds break autograd (inplace_blocks.py)
        add_differentiable_blocks(mp, checkpoint=model_checkpointing)
        if model_checkpointing:
            add_model_checkpointing(mp)
            if cuda_graphs_enabled(cuda_graphs):
                log.info("DOODL: CUDA graphs off for this run: the model's blocks are checkpointed")
            cuda_graphs = False
    if grad and precision == "fp32" and mp.model_dtype() != torch.float32:
        mp.set_model_compute_dtype(torch.float32)
    override = differentiable_attention_override() if grad else None
    if override is not None and "optimized_attention_override" not in mp.model_options.get(
            "transformer_options", {}):
        mp.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
    if extra_patchers:
        mp.set_additional_models("doodl", list(extra_patchers))
    guider = comfy.samplers.CFGGuider(mp)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    sampler = _CallbackSampler(fn, grad, precision, extra_modules, cuda_graphs_enabled(cuda_graphs),
                               torch_compile_enabled(torch_compile), bf16_copies)
    # ComfyUI loads (moves) the models and prepares the conds in inference mode, as its own samplers
    # do; only our sampler's body leaves it. A weight that ComfyUI moves to the GPU outside inference
    # mode becomes a tensor without a version counter, which then fails every later call
    # ("Inference tensors do not track version counter", measured on an H200, 2026-12-02).
    with torch.inference_mode():
        if grad:
            comfy.model_management.load_models_gpu([mp] + list(extra_patchers), force_full_load=True)
        zeros = torch.zeros(tuple(latent_shape), dtype=torch.float32)
        guider.sample(zeros, zeros.clone(), sampler, sigmas.detach().clone(), seed=int(seed),
                      disable_pbar=True)
    return sampler.result
