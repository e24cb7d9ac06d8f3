"""Activation checkpointing by block: keep each block's input, recompute its activations in the
backward pass, one block at a time. The same values and gradients (the recomputation replays the
same operations); the cost is one more forward of the checkpointed blocks per backward pass.

:func:`checkpointed` wraps one ``forward``; :func:`repeated_blocks` finds the blocks of a network
(the elements of its ``ModuleList`` stacks of one block class: a ViT's transformer layers, a text
tower's layers); :func:`checkpointed_modules` patches given modules' ``forward`` for the duration
of a ``with``, and :func:`checkpointed_blocks` those blocks' (the backward pass may run after it:
the recomputation calls the original ``forward`` that the wrapper holds).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
import torch.utils.checkpoint

__all__ = ["checkpointed", "repeated_blocks", "checkpointed_modules", "checkpointed_blocks"]

#: a ModuleList of at least this many blocks of one class is a stack worth checkpointing
MIN_BLOCKS = 2
_MISSING = object()


def _snapshot(value):
    # a dict an outer loop mutates while the forward runs (ComfyUI's transformer_options) is
    # recomputed as it was at this block's forward
    return dict(value) if isinstance(value, dict) else value


def checkpointed(forward: Callable) -> Callable:
    """``forward`` under ``torch.utils.checkpoint`` when it builds an autograd graph (grad mode on
    and a tensor argument that requires grad), a plain call otherwise (no-grad passes pay
    nothing)."""

    def run(*args, **kwargs):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad
                                           for a in (*args, *kwargs.values())):
            args = tuple(_snapshot(a) for a in args)
            kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    run.doodl_checkpointed = True
    return run


def repeated_blocks(modules: Iterable[torch.nn.Module], min_blocks: int = MIN_BLOCKS) -> list[torch.nn.Module]:
    """The elements of every ``ModuleList`` (in ``modules``, at any depth) that holds at least
    ``min_blocks`` modules of one class with parameters, outermost stacks first; blocks inside an
    already chosen block are not chosen again. Each module once."""
    chosen: list[torch.nn.Module] = []
    inside: set[int] = set()
    for root in modules:
        for _, m in root.named_modules():
            if id(m) in inside or not isinstance(m, torch.nn.ModuleList) or len(m) < min_blocks:
                continue
            if len({type(b) for b in m}) != 1 or not all(any(True for _ in b.parameters()) for b in m):
                continue
            for block in m:
                if id(block) not in inside:
                    chosen.append(block)
                    inside.update(id(x) for x in block.modules())
    return chosen


@contextlib.contextmanager
def checkpointed_modules(modules: Iterable[torch.nn.Module]) -> Iterator[int]:
    """Within the context, each of ``modules`` runs :func:`checkpointed` (its ``forward``, and any
    instance ``forward`` it had, restored on exit); yields how many."""
    modules = list(modules)
    previous = []
    for module in modules:
        previous.append(vars(module).get("forward", _MISSING))
        module.forward = checkpointed(module.forward)
    try:
        yield len(modules)
    finally:
        for module, prev in zip(modules, previous):
            if prev is _MISSING:
                del module.forward
            else:
                module.forward = prev


@contextlib.contextmanager
def checkpointed_blocks(modules: Iterable[torch.nn.Module], enabled: bool = True) -> Iterator[int]:
    """Within the context, the :func:`repeated_blocks` of ``modules`` run checkpointed when they
    build a graph; yields how many blocks. Their ``forward`` is restored on exit."""
    with checkpointed_modules(repeated_blocks(modules) if enabled else []) as n:
        yield n
