"""Activation checkpointing of the diffusion model's blocks, for memory-short gradient passes.

A model call with gradients keeps every intermediate tensor of the network for its backward pass
(SDXL at 1024², CFG batch 2: about 6.7 GiB). With checkpointing, each block keeps only its input
and rebuilds its own activations in the backward pass, one block at a time: the same values and
gradients for one more forward per call with gradients. The memory plan (``memory_plan.py``)
switches it on after "no CUDA graphs" (the calls are then eager; a graph records a fixed
forward/backward pair and gains nothing from recomputation).

It is set with ComfyUI's own mechanisms, on the clone of the model the gradient run owns, never on
the input model: ``ModelPatcher.add_object_patch`` replaces the ``forward`` of each block
(ComfyUI applies object patches when it loads the clone and restores them when it unloads it),
and Flux's blocks, which the pack already replaces through ``patches_replace`` for autograd
(``inplace_blocks.py``), checkpoint inside those replacements. Blocks:

* UNet models (SD1.x, SD2.x, SDXL): every layer of ``input_blocks``, ``middle_block`` and
  ``output_blocks`` (resnets, transformers, down/upsamplers);
* SD3's MMDiT: every ``joint_blocks`` entry;
* Flux: every double- and single-stream block (``inplace_blocks.py``).

A model with none of these is refused up front (``ModelNotCheckpointable``) rather than run without
the saving the plan counted on.
"""
from __future__ import annotations

import torch

from ..core.checkpointing import checkpointed
from .inplace_blocks import flux_block_classes

__all__ = ["checkpoint_targets", "add_model_checkpointing", "ModelNotCheckpointable"]

_UNET_LISTS = ("input_blocks", "middle_block", "output_blocks")
_DIT_LISTS = ("joint_blocks",)


class ModelNotCheckpointable(ValueError):
    """The diffusion model has no block layout the pack knows how to checkpoint."""


def checkpoint_targets(diffusion_model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{dotted path under diffusion_model: module}`` of the blocks to checkpoint by ``forward``
    patch (UNet layers, MMDiT joint blocks); {} for Flux (see ``inplace_blocks.py``) and for
    unknown layouts."""
    out: dict[str, torch.nn.Module] = {}
    if all(isinstance(getattr(diffusion_model, n, None), torch.nn.ModuleList)
           for n in ("input_blocks", "output_blocks")):
        for name in _UNET_LISTS:
            container = getattr(diffusion_model, name, None)
            if not isinstance(container, torch.nn.Module):
                continue  # a UNet without a middle block
            # input_blocks/output_blocks: lists of TimestepEmbedSequential; middle_block: one
            sequences = [(f"{name}.{i}", seq) for i, seq in enumerate(container)] \
                if name != "middle_block" else [(name, container)]
            for prefix, seq in sequences:
                for j, layer in enumerate(seq):
                    if any(True for _ in layer.parameters()):
                        out[f"{prefix}.{j}"] = layer
        return out
    for name in _DIT_LISTS:
        blocks = getattr(diffusion_model, name, None)
        if isinstance(blocks, torch.nn.ModuleList):
            out.update({f"{name}.{i}": b for i, b in enumerate(blocks)})
    return out


def add_model_checkpointing(model_patcher) -> int:
    """Checkpoint the blocks of ``model_patcher``'s diffusion model (a clone the caller owns);
    returns how many blocks. Flux's blocks are checkpointed by the differentiable replacements
    (``add_differentiable_blocks(..., checkpoint=True)``), which the caller sets up."""
    dm = model_patcher.get_model_object("diffusion_model")
    classes = flux_block_classes() or ()
    flux = [b for name in ("double_blocks", "single_blocks") for b in getattr(dm, name, None) or []
            if isinstance(b, classes)]
    targets = checkpoint_targets(dm)
    if not targets and not flux:
        raise ModelNotCheckpointable(
            f"DOODL cannot checkpoint this diffusion model ({type(dm).__name__}): it knows the blocks "
            "of UNet models (SD1.x, SD2.x, SDXL), SD3 and Flux. Give the run more memory (close other "
            "programs, lower --reserve-vram, fewer crops or a smaller image) instead.")
    for path, module in targets.items():
        model_patcher.add_object_patch(f"diffusion_model.{path}.forward", checkpointed(module.forward))
    return len(targets) + len(flux)
