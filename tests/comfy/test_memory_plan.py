"""Automatic memory-saving choices: made in order when ComfyUI reports little free memory (only its
free-memory query is mocked), applied to the run, and reported in the outputs."""
import json

import pytest
import torch

from tests.comfy.test_scorer_management import ConvScorer
from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui

GIB = 1024 ** 3


def _needs(**kw):
    from doodl_nodes.bridge.memory_plan import MemoryNeeds

    base = dict(weights=4 * GIB, unet_params=860_000_000, bf16_copies=True, cuda_graphs=True, latent_numel=4 * 64 * 64,
                cfg_batch=2, image_pixels=512 * 512, images=2, scorer_params=300_000_000, crops=16,
                crops_with_grad=16, decoder_checkpointing=False)
    base.update(kw)
    return MemoryNeeds(**base)


def test_choices_come_in_order_until_the_estimate_fits():
    require_comfyui()
    from doodl_nodes.bridge.memory_plan import estimate, plan_memory

    needs = _needs()
    full = estimate(needs)
    kw = dict(score_images="both", reduction_keeps_all=True)
    assert plan_memory(needs, full + 1, **kw).choices == []
    order = ["decoder checkpointing", "scorer checkpointing", "crop chunks", "one scored image", "no CUDA graphs",
             "model checkpointing"]
    seen = []
    for available in (full - 1, int(full * 0.8), int(full * 0.6), int(full * 0.5), int(full * 0.45),
                      int(full * 0.4), GIB):
        plan = plan_memory(needs, available, **kw)
        assert plan.choices == order[:len(plan.choices)]
        assert plan.choices and (plan.estimate <= available or plan.choices == order)
        seen.append(len(plan.choices))
    assert seen == sorted(seen) and seen[-1] == 6          # less memory, more savings
    last = plan_memory(needs, GIB, **kw)
    assert (last.crop_chunk, last.decoder_checkpointing, last.score_images, last.cuda_graphs, last.bf16_copies,
            last.model_checkpointing, last.scorer_checkpointing) == (4, True, "x", False, False, True, True)
    # savings that do not apply are not offered
    p = plan_memory(_needs(bf16_copies=False, cuda_graphs=False, crops_with_grad=1, decoder_checkpointing=True,
                           model_checkpointing=True, scorer_checkpointing=True), GIB,
                    score_images="x", reduction_keeps_all=False)
    assert p.choices == []
    assert estimate(_needs(crops_with_grad=4)) < full
    # graphs cost their pools and the bf16 copies; without graphs the copies are not made
    assert estimate(_needs(cuda_graphs=False)) < estimate(_needs(bf16_copies=False)) < full
    assert estimate(_needs(cuda_graphs=False)) == estimate(_needs(cuda_graphs=False, bf16_copies=False))


def test_short_memory_choices_are_applied_and_reported(monkeypatch):
    require_comfyui()
    import comfy.model_management as mm

    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=2)
    scorer = ConvScorer(3)
    calls = []
    original = scorer.crop_loss

    def counting(pixels):   # the crop batches scored with a gradient
        if torch.is_grad_enabled() and pixels.requires_grad:
            calls.append(pixels.shape[0])
        return original(pixels)

    scorer.crop_loss = counting

    def run(**extra):
        calls.clear()
        with torch.inference_mode():
            out = DOODLOptimize().optimize(
                model=model, vae=vae, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas, scorer=scorer,
                seed=0, iterations=1, lr=1.0, momentum=0.9, clip=1e-2, perturbation=0.0, renormalize=True,
                tie_latents=True, start_step=0, grad_mode="checkpoint", num_crops=8, cut_power=0.3,
                crop_reduction="auto", score_images="both", precision="fp32", latent=tiny_latent("eps"), **extra)
        return json.loads(out["result"][4]), list(calls)

    plenty, plenty_calls = run()
    assert plenty["memory"]["choices"] == [] and plenty["memory"]["available_gib"] > 0
    mm.unload_all_models()
    def no_room(dev=None, torch_free_too=False):   # a card with no room left
        return (1024, 1024) if torch_free_too else 1024

    monkeypatch.setattr(mm, "get_free_memory", no_room)
    short, short_calls = run()
    choices = short["memory"]["choices"]
    # decoder and scorer checkpointing are on by default; on the CPU there are no CUDA graphs to
    # drop: the last saving is model checkpointing
    assert choices == ["crop chunks", "one scored image", "model checkpointing"]
    # with the node's decoder_checkpointing off, the plan turns both back on first
    off, _ = run(decoder_checkpointing=False)
    assert off["memory"]["choices"] == ["decoder checkpointing", "scorer checkpointing", "crop chunks",
                                        "one scored image", "model checkpointing"]
    assert any("memory was short" in w and "crop chunks" in w for w in short["warnings"])
    # applied: one scored image (8 crops of 1 image per objective call) in chunks of 4, recomputed
    # in the backward pass; with plenty of memory: both images' 16 crops at once
    assert plenty_calls[0] == 16 and set(short_calls) == {4}
    assert short["losses"] != plenty["losses"]   # one image instead of two: another objective


def test_available_memory_keeps_the_users_reserve(monkeypatch):
    """``--reserve-vram`` (ComfyUI's EXTRA_RESERVED_VRAM) is memory the user keeps for other programs:
    the plan must not count it as available (ComfyUI's own loader does not either)."""
    require_comfyui()
    import comfy.model_management as mm

    from doodl_nodes.bridge.memory_plan import available_memory

    mm.unload_all_models()
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 10 * GIB)
    monkeypatch.setattr(mm, "EXTRA_RESERVED_VRAM", 4 * GIB)
    assert available_memory(torch.device("cpu")) == 6 * GIB
    monkeypatch.setattr(mm, "EXTRA_RESERVED_VRAM", 12 * GIB)
    assert available_memory(torch.device("cpu")) == 0
