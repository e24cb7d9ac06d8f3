"""Run our own code inside ComfyUI's guider, with a denoiser made from MODEL + CONDITIONING + cfg.

``run_in_guider`` builds a ``CFGGuider`` on a *clone* of the model and passes it a
``comfy.samplers.Sampler`` whose ``sample`` calls back into our function (the shape of ComfyUI's own
``TrainSampler``). The guider does everything architecture-specific: loading the model (and the
VAE/scorer models attached with ``set_additional_models``), turning CONDITIONING into model inputs
(SD1 cross-attention, SDXL ``y``, Flux guidance, ...), batching cond and uncond into one call and
applying CFG (skipping uncond at cfg 1), model patches and wrappers. Inside, ``ChainModel.denoise``
is ComfyUI's denoiser ``D(z, sigma)`` in model (``process_in``) space.

Autograd inside ComfyUI (comfyui-notes §1): we leave ``inference_mode``, clone the conds, and,
when gradients are needed, make the loaded weights autograd-safe and frozen every run.

Speed (benchmarks/RESULTS.md): on CUDA, a CFG model call through ComfyUI is bound by Python and
kernel-launch overhead, not by the GPU. ``_GraphedGuider`` records the whole call (guider, CFG,
model) as CUDA graphs and replays them: one graph for calls without grad, and two "slots" (forward
graph + backward graph each) for the calls with grad that one EDICT step's vector-Jacobian product
makes. Replays are exact re-executions of the captured kernels on new input values. Graphs are used
only where that is safe (model fully on the GPU, no patches/wrappers/hooks/ControlNet/timestep
ranges, one latent shape); anything else, a failed capture, or a replay order that would clobber a
slot's saved activations falls back to the ordinary eager call (the backward then recomputes the
call eagerly from its saved input). No-grad replays are bit-identical to eager calls (measured), so
EDICT sampling/inversion give the same numbers with or without graphs. The gradient graphs of a
model stored in fp16/fp32 run it as a bf16 model from channels-last bf16 copies of its weights
(made once per run) instead of under bf16 autocast: same precision class, ~5e-3 relative difference
in one call's input gradient against the eager autocast path (measured, SD1.5).
``DOODL_CUDA_GRAPHS=0`` in the environment (or ``cuda_graphs=False``) turns graphs off;
``DOODL_TORCH_COMPILE=1`` (or ``torch_compile=True``) also compiles the model with torch.compile
before recording (faster replays, about two minutes of compiling in the first run of a process).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

import comfy.model_management
import comfy.samplers

from .autograd import clone_tensor_tree, make_autograd_safe
from .safety import check_exactness_safe, check_gradient_safe

__all__ = ["ChainModel", "run_in_guider", "PRECISIONS", "model_fingerprint", "cuda_graphs_enabled",
           "torch_compile_enabled"]

PRECISIONS = ("bf16", "fp32")
CUDA_GRAPHS_ENV = "DOODL_CUDA_GRAPHS"

log = logging.getLogger("doodl")


def cuda_graphs_enabled(requested: Optional[bool] = None) -> bool:
    """Whether to try CUDA graphs: ``requested`` if given, else the ``DOODL_CUDA_GRAPHS``
    environment variable ("0"/"false"/"off" disables; default on)."""
    if requested is not None:
        return bool(requested)
    return os.environ.get(CUDA_GRAPHS_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


TORCH_COMPILE_ENV = "DOODL_TORCH_COMPILE"


def torch_compile_enabled(requested: Optional[bool] = None) -> bool:
    """Whether to compile the model with ``torch.compile`` before recording the CUDA graphs:
    ``requested`` if given, else ``DOODL_TORCH_COMPILE`` ("1"/"true"/"on"; default off: the first
    run of a process then spends about a minute per model variant compiling)."""
    if requested is not None:
        return bool(requested)
    return os.environ.get(TORCH_COMPILE_ENV, "0").strip().lower() in ("1", "true", "on", "yes")


def _clone_conds(conds: dict, device: Optional[torch.device] = None) -> dict:
    """Clone every tensor of the guider's processed conds (including CONDRegular wrappers), moving
    them to ``device`` when given: ComfyUI keeps them on the CPU and copies them to the model's
    device at every model call otherwise (a copy a CUDA graph cannot record)."""
    def clone(obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            return t.to(device).clone() if device is not None else t.clone()
        if isinstance(obj, dict):
            return {k: clone(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clone(v) for v in obj]
        if hasattr(obj, "cond") and hasattr(obj, "_copy_with"):
            return obj._copy_with(clone(obj.cond))
        return obj
    with torch.inference_mode(False):
        return {k: clone(v) for k, v in conds.items()}


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


@dataclass
class ChainModel:
    """What our code gets inside the guider: ComfyUI's denoiser and model objects."""

    model_wrap: Any                 # the CFGGuider (callable: x, sigma_vec, model_options, seed)
    extra_args: dict
    sigmas: torch.Tensor            # as given (device tensor)
    max_denoise: bool
    precision: str = "bf16"
    calls: int = 0
    _autocast: bool = field(default=False, init=False)
    _graphs: Any = field(default=None, init=False, repr=False)

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
        ``z``'s dtype. The cast is deterministic, so EDICT stays exactly invertible.
        """
        self.calls += 1
        comfy.model_management.throw_exception_if_processing_interrupted()
        z_in = z.to(torch.float32) if z.dtype == torch.float64 else z
        s_in = sigma.reshape(1).to(device=z.device, dtype=z_in.dtype).expand(z.shape[0])
        grad = z.requires_grad and torch.is_grad_enabled()
        if self._graphs is not None:
            out = self._graphs(z_in, s_in, grad)
            if out is not None:
                return out.to(z.dtype)
        return self._eager(z_in, s_in, grad).to(z.dtype)

    def _eager(self, z_in: torch.Tensor, s_in: torch.Tensor, grad: bool,
               cache_enabled: bool = True, autocast: Optional[bool] = None) -> torch.Tensor:
        ctx = contextlib.nullcontext()
        if (self._autocast and grad) if autocast is None else autocast:
            ctx = torch.autocast(device_type=z_in.device.type, dtype=torch.bfloat16,
                                 cache_enabled=cache_enabled)
        with ctx:
            return self.model_wrap(z_in, s_in, **self.extra_args)

    @property
    def graph_stats(self) -> dict:
        """Counters of the CUDA-graph fast path (empty when it is not in use)."""
        return {} if self._graphs is None else dict(self._graphs.stats)

    def noise_scale(self, sigma: float) -> float:
        """Scale that makes unit-variance noise a latent at ``sigma`` (1 / calculate_input)."""
        s = torch.tensor([float(sigma)], dtype=torch.float64, device=self.device)
        one = torch.ones((1, 1), dtype=torch.float64, device=self.device)
        return float(1.0 / self.model_sampling.calculate_input(s, one).reshape(()))

    def initial_latent(self, noise: torch.Tensor) -> torch.Tensor:
        """ComfyUI's starting latent for unit noise at ``sigmas[0]`` (as KSAMPLER builds it, in
        float32), returned as a float64 state on the model's device."""
        noise = noise.to(device=self.device, dtype=torch.float32)
        x = self.model_sampling.noise_scaling(self.sigmas[0].to(torch.float32), noise,
                                              torch.zeros_like(noise), self.max_denoise)
        return x.to(torch.float64)


# ---------------------------------------------------------------------------------------------
# CUDA graphs for the model call (see the module docstring)

_COND_BLOCKERS = ("control", "hooks", "timestep_start", "timestep_end", "area", "mask", "gligen",
                  "default")


def _has_functions(tree) -> bool:
    """True if a nested dict/list of wrapper/callback registrations holds any function."""
    if callable(tree):
        return True
    if isinstance(tree, dict):
        return any(_has_functions(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return any(_has_functions(v) for v in tree)
    return False


def _graph_blockers(model_wrap, extra_args: dict, device: torch.device) -> list[str]:
    """Why the model call cannot be recorded as a CUDA graph (empty: it can)."""
    if device.type != "cuda":
        return [f"device {device} is not CUDA"]
    why = []
    base = model_wrap.inner_model
    if getattr(base, "model_lowvram", False):
        why.append("the model is only partially loaded (lowvram)")
    params = list(base.parameters())
    if any(p.device != device for p in params):
        why.append("not every model weight is on the GPU")
    if any(p.requires_grad for p in params):
        why.append("model weights require grad")
    options = [extra_args.get("model_options") or {}, getattr(model_wrap, "model_options", None) or {}]
    for mo in options:
        for key, value in mo.items():
            if key in ("transformer_options", "to_load_options"):
                continue
            if value:
                why.append(f"model option {key!r}")
        for key, value in (mo.get("transformer_options") or {}).items():
            if key in ("wrappers", "callbacks"):
                if _has_functions(value):
                    why.append(f"model {key}")
            elif key != "sample_sigmas" and value:
                why.append(f"transformer option {key!r}")
    mp = getattr(model_wrap, "model_patcher", None)
    if mp is not None and (getattr(mp, "hook_patches", None) or _has_functions(getattr(mp, "wrappers", {}))
                           or _has_functions(getattr(mp, "callbacks", {}))):
        why.append("model hooks, wrappers or callbacks")
    for name, conds in (getattr(model_wrap, "conds", None) or {}).items():
        for c in conds or []:
            for key in _COND_BLOCKERS:
                if c.get(key) is not None:
                    why.append(f"{name} conditioning has {key!r}")
    return sorted(set(why))


@contextlib.contextmanager
def _frozen_free_memory(device: torch.device):
    """During a capture, answer ComfyUI's free-memory queries (used to decide cond batching) with
    the value measured just before, so that no CUDA query runs inside the capture."""
    mm = comfy.model_management
    original = mm.get_free_memory
    free = original(device)
    total = original(device, True)

    def frozen(dev=None, torch_free_too=False):
        return total if torch_free_too else free

    mm.get_free_memory = frozen
    try:
        yield
    finally:
        mm.get_free_memory = original


class _Slot:
    """One recorded model call with grad: forward graph, backward graph, their static tensors."""

    def __init__(self, fwd, bwd, z, s, out, gout, gz):
        self.fwd, self.bwd = fwd, bwd
        self.z, self.s, self.out, self.gout, self.gz = z, s, out, gout, gz
        self.live: Optional[int] = None   # token of the forward whose activations the slot holds


class _GraphedCall(torch.autograd.Function):
    """Replay a slot's forward graph; backward replays its backward graph if the slot still holds
    this call's activations, else recomputes the call eagerly from the saved input."""

    @staticmethod
    def forward(ctx, runner, idx, z, s):
        slot = runner.slots[idx]
        slot.z.copy_(z)
        slot.s.copy_(s)
        slot.fwd.replay()
        runner.token += 1
        slot.live = runner.token
        ctx.runner, ctx.idx, ctx.token = runner, idx, runner.token
        ctx.save_for_backward(z, s)
        runner.stats["graph_grad_calls"] += 1
        return slot.out.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        runner = ctx.runner
        slot = runner.slots[ctx.idx] if runner.slots else None
        if slot is not None and slot.live == ctx.token:
            slot.gout.copy_(g)
            slot.bwd.replay()
            slot.live = None
            runner.stats["graph_backwards"] += 1
            return None, None, slot.gz.clone(), None
        runner.stats["eager_recomputes"] += 1
        z, s = ctx.saved_tensors
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            out = runner.chain._eager(zz, s, True)
            (gz,) = torch.autograd.grad(out, zz, g)
        return None, None, gz, None


class _GraphedGuider:
    """CUDA-graph replays of ``ChainModel._eager`` for one latent shape.

    ``__call__`` returns the model output, or None when the caller must run the call eagerly.
    Pools are private per graph group (no-grad graph; each grad slot), so a replay can only
    overwrite its own group's memory; a grad slot's activations stay valid from its forward
    replay until its backward replay, and a slot reused before that invalidates the older call
    (whose backward then recomputes eagerly).
    """

    WARMUP = 2
    SLOTS = 2   # one EDICT step's vector-Jacobian product holds two model calls

    def __init__(self, chain: "ChainModel", shape, device: torch.device, compile: bool = False):
        self.chain = chain
        self.compile = compile
        self.shape = tuple(shape)
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.nograd = None
        self.slots: list = [None] * self.SLOTS
        self.order = list(range(self.SLOTS))   # least recently used first
        self.token = 0
        self.broken: Optional[str] = None
        self._shadows: Optional[dict] = None
        self.stats = {"graph_calls": 0, "graph_grad_calls": 0, "graph_backwards": 0,
                      "eager_calls": 0, "eager_recomputes": 0, "captures": 0}

    def __call__(self, z: torch.Tensor, s: torch.Tensor, grad: bool) -> Optional[torch.Tensor]:
        if (self.broken is not None or tuple(z.shape) != self.shape or z.dtype != torch.float32
                or z.device != self.device):
            self.stats["eager_calls"] += 1
            return None
        try:
            return self._grad_call(z, s) if grad else self._nograd_call(z, s)
        except Exception as exc:  # a capture that failed (out of memory too): eager from here on
            self._fail(exc)
            self.stats["eager_calls"] += 1
            return None

    def _fail(self, exc: BaseException) -> None:
        self.broken = f"{type(exc).__name__}: {exc}"[:400]
        log.warning("DOODL: CUDA graphs turned off for this run (%s); continuing without them",
                    self.broken)
        self.close()
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()   # the graphs' memory pools

    def close(self) -> None:
        self.nograd = None
        self.slots = [None] * self.SLOTS
        self._shadows = None

    #: lay the bf16 copies of 4-D (conv) weights out channels-last: cuDNN then skips its NCHW->NHWC
    #: conversions (SD1.5 fwd+bwd call 26.1 -> 22.6 ms on an H200; benchmarks/RESULTS.md)
    SHADOW_CHANNELS_LAST = True

    def _bf16_shadows(self) -> Optional[dict]:
        """bf16 copies of the diffusion model's weights for the grad graphs, when the gradient
        pass would otherwise run a fp16/fp32 model under bf16 autocast. The grad graphs then run
        the model as a bf16 model (no autocast): the casts are made once per run instead of at
        every call and are not saved again for every call's backward, and the normalizations run
        in bf16 instead of being cast to float32 and back around every layer."""
        base = self.chain.base_model
        if not self.chain._autocast or base.manual_cast_dtype is not None:
            return None
        if self._shadows is None:
            shadows = {}
            for name, p in base.diffusion_model.named_parameters():
                if p.dtype not in (torch.float16, torch.float32):
                    continue
                t = p.detach().to(torch.bfloat16)
                if self.SHADOW_CHANNELS_LAST and t.dim() == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
                shadows[name] = t
            self._shadows = shadows
            self.stats["bf16_weight_copies_gib"] = round(
                sum(t.numel() for t in shadows.values()) * 2 / 1024 ** 3, 3)
        return self._shadows

    @contextlib.contextmanager
    def _weights(self, shadows: Optional[dict]):
        """Within the context the diffusion model is a bf16 model made of the given tensors."""
        if not shadows:
            yield
            return
        dm = self.chain.base_model.diffusion_model
        swapped = []
        old_dtype = getattr(dm, "dtype", None)
        try:
            for name, t in shadows.items():
                *path, leaf = name.split(".")
                owner = dm
                for part in path:
                    owner = getattr(owner, part)
                swapped.append((owner, leaf, owner._parameters[leaf]))
                owner._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
            dm.dtype = torch.bfloat16   # what BaseModel.get_dtype() casts the inputs to
            yield
        finally:
            dm.dtype = old_dtype
            for owner, leaf, original in reversed(swapped):
                owner._parameters[leaf] = original

    def _warmup(self, fn) -> None:
        torch.cuda.synchronize(self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for _ in range(self.WARMUP):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def _compiled(self):
        """Within the context the diffusion model's forward is ``torch.compile``d (inductor, static
        shapes). Only the warm-up and the capture run it; the graphs keep its kernels."""
        if not self.compile:
            yield
            return
        dm = self.chain.base_model.diffusion_model
        dm.forward = torch.compile(type(dm).forward.__get__(dm), dynamic=False)
        try:
            yield
        finally:
            with contextlib.suppress(AttributeError):
                del dm.forward  # the class's forward again

    def _capture(self, capture):
        """Run ``capture()`` (warm-up + recording), compiled when asked; a compilation that fails
        is reported once and the capture is redone without it."""
        t0 = time.perf_counter()
        try:
            if self.compile:
                try:
                    with self._compiled():
                        return capture()
                except torch.OutOfMemoryError:
                    raise   # not a compilation problem: __call__ turns the graphs off
                except Exception as exc:
                    self.compile = False
                    self.stats["compile_error"] = f"{type(exc).__name__}: {exc}"[:400]
                    log.warning("DOODL: torch.compile failed (%s); recording the uncompiled model",
                                self.stats["compile_error"])
                    with contextlib.suppress(Exception):
                        torch.cuda.synchronize(self.device)
            return capture()
        finally:
            self.stats["capture_s"] = round(self.stats.get("capture_s", 0.0) + time.perf_counter() - t0, 3)

    def _capture_nograd(self, z, s):
        sz, ss = z.detach().clone(), s.detach().clone()
        with torch.no_grad():
            self._warmup(lambda: self.chain._eager(sz, ss, False))
            graph = torch.cuda.CUDAGraph()
            with _frozen_free_memory(self.device), torch.cuda.graph(graph, stream=self.stream,
                                                                      capture_error_mode="thread_local"):
                out = self.chain._eager(sz, ss, False)
        self.stats["captures"] += 1
        return graph, sz, ss, out

    def _nograd_call(self, z, s):
        if self.nograd is None:
            self.nograd = self._capture(lambda: self._capture_nograd(z, s))
        graph, sz, ss, out = self.nograd
        sz.copy_(z)
        ss.copy_(s)
        graph.replay()
        self.stats["graph_calls"] += 1
        return out.clone()

    def _capture_slot(self, z, s) -> _Slot:
        sz = z.detach().clone().requires_grad_(True)
        ss = s.detach().clone()

        shadows = self._bf16_shadows()
        autocast = None if shadows is None else False

        def fwd_bwd():
            out = self.chain._eager(sz, ss, True, cache_enabled=False, autocast=autocast)
            torch.autograd.grad(out, sz, torch.ones_like(out))

        with torch.enable_grad(), self._weights(shadows):
            self._warmup(fwd_bwd)
            pool = torch.cuda.graph_pool_handle()
            fwd = torch.cuda.CUDAGraph()
            with _frozen_free_memory(self.device), torch.cuda.graph(
                    fwd, stream=self.stream, pool=pool, capture_error_mode="thread_local"):
                out = self.chain._eager(sz, ss, True, cache_enabled=False, autocast=autocast)
            gout = torch.empty_like(out)
            bwd = torch.cuda.CUDAGraph()
            with torch.cuda.graph(bwd, stream=self.stream, pool=pool,
                                  capture_error_mode="thread_local"):
                (gz,) = torch.autograd.grad(out, sz, gout)
        self.stats["captures"] += 2
        return _Slot(fwd, bwd, sz, ss, out.detach(), gout, gz)

    def _grad_call(self, z, s):
        idx = next((i for i in self.order if self.slots[i] is None or self.slots[i].live is None),
                   self.order[0])
        self.order.remove(idx)
        self.order.append(idx)
        if self.slots[idx] is None:
            self.slots[idx] = self._capture(lambda: self._capture_slot(z, s))
        return _GraphedCall.apply(self, idx, z, s)


#: Counters of the CUDA-graph path of the most recent ``run_in_guider`` call (diagnostics).
LAST_RUN_GRAPH_STATS: dict = {}


class _CallbackSampler(comfy.samplers.Sampler):
    def __init__(self, fn: Callable[[ChainModel], Any], grad: bool, precision: str,
                 extra_modules: Sequence[torch.nn.Module], cuda_graphs: bool = False,
                 torch_compile: bool = False):
        self.fn = fn
        self.grad = grad
        self.precision = precision
        self.extra_modules = list(extra_modules)
        self.cuda_graphs = cuda_graphs
        self.torch_compile = torch_compile
        self.result = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None,
               denoise_mask=None, disable_pbar=False):
        with torch.inference_mode(False):
            model_wrap.conds = _clone_conds(model_wrap.conds, sigmas.device)
            extra_args = {k: v for k, v in extra_args.items() if k in ("model_options", "seed")}
            chain = ChainModel(model_wrap, extra_args, clone_tensor_tree(sigmas),
                               self.max_denoise(model_wrap, sigmas), self.precision)
            if self.grad:
                make_autograd_safe([model_wrap.inner_model] + self.extra_modules)
                chain._autocast = (self.precision == "bf16"
                                   and model_wrap.inner_model.get_dtype() != torch.bfloat16
                                   and model_wrap.inner_model.manual_cast_dtype != torch.bfloat16)
            LAST_RUN_GRAPH_STATS.clear()
            if self.cuda_graphs:
                why = _graph_blockers(model_wrap, extra_args, chain.device)
                if why:
                    LAST_RUN_GRAPH_STATS["off"] = "; ".join(why)
                    if chain.device.type == "cuda":
                        log.info("DOODL: CUDA graphs off for this run: %s", LAST_RUN_GRAPH_STATS["off"])
                else:
                    chain._graphs = _GraphedGuider(chain, noise.shape, chain.device, self.torch_compile)
            try:
                with contextlib.nullcontext() if self.grad else torch.no_grad():
                    self.result = self.fn(chain)
            finally:
                if chain._graphs is not None:
                    LAST_RUN_GRAPH_STATS.update(chain._graphs.stats)
                    if chain._graphs.broken:
                        LAST_RUN_GRAPH_STATS["broken"] = chain._graphs.broken
                    chain._graphs.close()
                    chain._graphs = None
            return torch.zeros_like(noise)


def run_in_guider(model, positive, negative, cfg: float, sigmas: torch.Tensor,
                  latent_shape: Sequence[int], fn: Callable[[ChainModel], Any], *,
                  grad: bool = False, precision: str = "bf16", extra_patchers: Sequence = (),
                  extra_modules: Sequence[torch.nn.Module] = (), seed: int = 0,
                  what: str = "EDICT", cuda_graphs: Optional[bool] = None,
                  torch_compile: Optional[bool] = None) -> Any:
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
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    (check_gradient_safe if grad else check_exactness_safe)(model, what)
    mp = model.clone()
    if grad and precision == "fp32" and mp.model_dtype() != torch.float32:
        mp.set_model_compute_dtype(torch.float32)
    if extra_patchers:
        mp.set_additional_models("doodl", list(extra_patchers))
    if grad:
        comfy.model_management.load_models_gpu([mp] + list(extra_patchers), force_full_load=True)
    guider = comfy.samplers.CFGGuider(mp)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    sampler = _CallbackSampler(fn, grad, precision, extra_modules, cuda_graphs_enabled(cuda_graphs),
                               torch_compile_enabled(torch_compile))
    with torch.inference_mode(False):
        zeros = torch.zeros(tuple(latent_shape), dtype=torch.float32)
        guider.sample(zeros, zeros.clone(), sampler, sigmas.detach().clone(), seed=int(seed),
                      disable_pbar=True)
    return sampler.result
