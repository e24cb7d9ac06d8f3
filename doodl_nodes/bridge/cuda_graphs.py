"""CUDA graphs (and optional torch.compile) for the guider's model call.

Speed (benchmarks/RESULTS.md): on CUDA, a CFG model call through ComfyUI is bound by Python and
kernel-launch overhead, not by the GPU. ``GraphedGuider`` records the whole call (guider, CFG,
model) as CUDA graphs and replays them: one graph for calls without grad, and one "slot" (forward
graph + backward graph) for the calls with grad: the gradient walker differentiates one model call
at a time (an EDICT step's vector-Jacobian product is split into two single-call products).
Replays are exact re-executions of the captured kernels on new input values. Graphs are used
only where that is safe (model fully on the GPU, no patches/wrappers/hooks/ControlNet/timestep
ranges, one latent shape); anything else, a failed capture, or a replay order that would clobber a
slot's saved activations falls back to the ordinary eager call (the backward then recomputes the
call eagerly from its saved input). No-grad replays are bit-identical to eager calls (measured), so
EDICT sampling/inversion give the same numbers in every graphed run. The gradient graphs of a
model stored in fp16/fp32 run it as a bf16 model from channels-last bf16 copies of its weights
(made once per run) instead of under bf16 autocast: same precision class, ~5e-3 relative difference
in one call's input gradient against the eager autocast path (measured, SD1.5). An uncompiled
graphed run holds the model channels-last end to end with fused Triton kernels for its norms and
GEGLU gates for the whole run (``fast_unet.py``, switched by ``chain.py``), so the recorded graphs and
any eager call inside the run compute the same function; ``DOODL_CHANNELS_LAST=0`` keeps the
layout and ``DOODL_FUSED_KERNELS=0`` PyTorch's ops. ``DOODL_CUDA_GRAPHS=0`` in the environment (or
``cuda_graphs=False``) turns graphs off; ``DOODL_TORCH_COMPILE=1`` (or ``torch_compile=True``)
also compiles the model with torch.compile before recording (about three minutes of compiling in
the first run of a process, one in a later process that finds inductor's on-disk caches; layouts
and fusions are then left to inductor).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Callable, Optional

import torch

import comfy.model_management

from ..core.fused_norm import triton_available
from .compiled_attention import attention_outside_graph

__all__ = ["GraphedGuider", "graph_blockers", "cuda_graphs_enabled", "torch_compile_enabled",
           "fused_kernels_enabled", "channels_last_enabled", "CUDA_GRAPHS_ENV", "TORCH_COMPILE_ENV",
           "FUSED_KERNELS_ENV", "FUSED_NORMS_ENV", "CHANNELS_LAST_ENV"]

log = logging.getLogger("doodl")

CUDA_GRAPHS_ENV = "DOODL_CUDA_GRAPHS"


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


FUSED_KERNELS_ENV = "DOODL_FUSED_KERNELS"
FUSED_NORMS_ENV = "DOODL_FUSED_NORMS"   # its earlier name, still honoured
CHANNELS_LAST_ENV = "DOODL_CHANNELS_LAST"


def _switched_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "off", "no")


def channels_last_enabled() -> bool:
    """Whether a graphed, uncompiled run holds the model channels-last end to end
    (``channels_last.py``): unless ``DOODL_CHANNELS_LAST`` is "0"/"false"/"off" (default on)."""
    return not _switched_off(CHANNELS_LAST_ENV)


def fused_kernels_enabled() -> bool:
    """Whether a graphed, uncompiled run runs the model's GroupNorm(+SiLU) layers and GEGLU gates as
    the pack's Triton kernels (``core/fused_norm.py``, ``core/fused_geglu.py``): when Triton is
    importable, unless ``DOODL_FUSED_KERNELS`` (or its earlier name ``DOODL_FUSED_NORMS``) is
    "0"/"false"/"off" (an escape hatch; default on)."""
    return triton_available() and not (_switched_off(FUSED_KERNELS_ENV) or _switched_off(FUSED_NORMS_ENV))


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


def _only_ours(tree) -> bool:
    """True if every function in a nested dict of patches is one of the pack's own replacements."""
    if callable(tree):
        return bool(getattr(tree, "doodl_differentiable", False))
    if isinstance(tree, dict):
        return all(_only_ours(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_only_ours(v) for v in tree)
    return True


def graph_blockers(model_wrap, extra_args: dict, device: torch.device, grad: bool = True) -> list[str]:
    """Why the model call cannot be recorded as a CUDA graph (empty: it can). ``grad``: the run
    differentiates the calls (weights that require grad would then get gradients recorded); a
    no-grad run (EDICT sampling and inversion) records under ``no_grad``, where that cannot happen,
    so the weights of a freshly loaded model (ComfyUI leaves ``requires_grad`` on) do not block it."""
    if device.type != "cuda":
        return [f"device {device} is not CUDA"]
    why = []
    base = model_wrap.inner_model
    if getattr(base, "model_lowvram", False):
        why.append("the model is only partially loaded (lowvram)")
    params = list(base.parameters())
    if any(p.device != device for p in params):
        why.append("not every model weight is on the GPU")
    if grad and any(p.requires_grad for p in params):
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
            elif key == "optimized_attention_override" and getattr(value, "doodl_differentiable", False):
                continue   # ours: a plain function choice, safe to record
            elif key == "patches_replace" and _only_ours(value):
                continue   # ours: Flux blocks without in-place adds (inplace_blocks.py), plain torch ops
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
            out = runner.call(zz, s, True)
            (gz,) = torch.autograd.grad(out, zz, g)
        return None, None, gz, None


#: the eager model call being recorded: ``call(z, s, grad, cache_enabled=True, autocast=None)``
ModelCall = Callable[..., torch.Tensor]


class GraphedGuider:
    """CUDA-graph replays of an eager model call (``ChainModel.call_model``) for one latent shape.

    ``__call__`` returns the model output, or None when the caller must run the call eagerly.
    Pools are private per graph group (no-grad graph; each grad slot), so a replay can only
    overwrite its own group's memory; a grad slot's activations stay valid from its forward
    replay until its backward replay, and a slot reused before that invalidates the older call
    (whose backward then recomputes eagerly).
    """

    WARMUP = 2
    SLOTS = 1   # the gradient walker holds one model call's activations at a time

    def __init__(self, call: ModelCall, base_model, shape, device: torch.device, *,
                 compile: bool = False, bf16_copies: bool = False):
        """``call``: the eager model call; ``base_model``: ComfyUI's BaseModel it runs (its
        diffusion model is compiled / given bf16 weights for the recording); ``bf16_copies``: run
        the gradient graphs as a bf16 model from bf16 copies of its weights instead of under the
        call's own autocast (for an fp16/fp32 model whose gradient pass is bf16)."""
        self.call = call
        self.base_model = base_model
        self.bf16_copies = bf16_copies
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

    def _bf16_shadows(self) -> Optional[dict]:
        """bf16 copies of the diffusion model's weights for the grad graphs, when the gradient
        pass would otherwise run a fp16/fp32 model under bf16 autocast. The grad graphs then run
        the model as a bf16 model (no autocast): the casts are made once per run instead of at
        every call and are not saved again for every call's backward, and the normalizations run
        in bf16 instead of being cast to float32 and back around every layer. 4-D (conv) copies
        are laid out channels-last, so cuDNN skips its NCHW->NHWC conversions (SD1.5 fwd+bwd call
        26.1 -> 22.6 ms on an H200; benchmarks/RESULTS.md)."""
        base = self.base_model
        if not self.bf16_copies or base.manual_cast_dtype is not None:
            return None
        if self._shadows is None:
            shadows = {}
            for name, p in base.diffusion_model.named_parameters():
                if p.dtype not in (torch.float16, torch.float32):
                    continue
                t = p.detach().to(torch.bfloat16)
                if t.dim() == 4:
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
        dm = self.base_model.diffusion_model
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
        dm = self.base_model.diffusion_model
        dm.forward = torch.compile(type(dm).forward.__get__(dm), dynamic=False)
        try:
            with attention_outside_graph():   # keeps the graphs cacheable (compiled_attention.py)
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
            self._warmup(lambda: self.call(sz, ss, False))
            graph = torch.cuda.CUDAGraph()
            with _frozen_free_memory(self.device), torch.cuda.graph(graph, stream=self.stream,
                                                                      capture_error_mode="thread_local"):
                out = self.call(sz, ss, False)
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
            out = self.call(sz, ss, True, cache_enabled=False, autocast=autocast)
            torch.autograd.grad(out, sz, torch.ones_like(out))

        with torch.enable_grad(), self._weights(shadows):
            self._warmup(fwd_bwd)
            pool = torch.cuda.graph_pool_handle()
            fwd = torch.cuda.CUDAGraph()
            with _frozen_free_memory(self.device), torch.cuda.graph(
                    fwd, stream=self.stream, pool=pool, capture_error_mode="thread_local"):
                out = self.call(sz, ss, True, cache_enabled=False, autocast=autocast)
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
