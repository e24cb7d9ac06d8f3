"""The scorers' own networks are ComfyUI models: loaded through load_models_gpu with the diffusion
model, listed in ComfyUI's loaded models (one entry per set of modules, reused across runs),
unloaded by ComfyUI, and never moved by the pack."""
import gc

import pytest
import torch

from doodl_nodes.scorers.base import CropScorer
from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


class ConvScorer(CropScorer):
    """A tiny scorer that owns a network: mean of a random conv's output per crop."""

    input_size = 16
    official_reduction = "mean"

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.net.requires_grad_(False)
        self.moves = 0
        self.name = f"conv{seed}"

    def crop_loss(self, pixels):
        p = next(self.net.parameters())
        return self.net(pixels.to(p.device, p.dtype)).mean(dim=(1, 2, 3))

    def scores(self, images):
        with torch.no_grad():
            return {"conv_mean": self.crop_loss(self.resize_whole(images)).cpu()}

    def modules(self):
        return [self.net]

    def to(self, device):   # the bridge must never call this (ComfyUI moves the modules)
        self.moves += 1
        return super().to(device)


def _entries(module):
    import comfy.model_management as mm

    from doodl_nodes.bridge.scorer_models import ScorerModules

    return [lm for lm in mm.current_loaded_models
            if isinstance(getattr(lm.model, "model", None), ScorerModules)
            and any(m is module for m in lm.model.model.parts)]


def test_scorer_and_monitor_networks_are_comfyui_models(tmp_path):
    require_comfyui()
    import comfy.model_management as mm

    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=2)
    scorer, monitor = ConvScorer(0), ConvScorer(1)

    def run():
        with torch.inference_mode():
            return DOODLOptimize().optimize(
                model=model, vae=vae, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas, scorer=scorer,
                seed=0, iterations=1, lr=1.0, momentum=0.9, clip=1e-2, perturbation=0.0, renormalize=True,
                tie_latents=True, start_step=0, grad_mode="checkpoint", num_crops=2, cut_power=0.3,
                crop_reduction="auto", score_images="both", precision="fp32", latent=tiny_latent("eps"),
                monitor=monitor)

    mm.unload_all_models()
    run()
    first = _entries(scorer.net)
    assert len(first) == 1 and len(_entries(monitor.net)) == 1
    patcher = first[0].model
    assert patcher.model_size() > 0 and patcher.load_device == mm.get_torch_device()
    run()   # the same patcher again: one entry, not a second copy
    again = _entries(scorer.net)
    assert len(again) == 1 and again[0].model is patcher
    assert scorer.moves == 0 and monitor.moves == 0   # the pack never moved them itself
    mm.unload_all_models()
    gc.collect()
    assert _entries(scorer.net) == [] and _entries(monitor.net) == []


def test_one_step_guidance_loads_its_scorer_through_comfyui():
    require_comfyui()
    import comfy.model_management as mm
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from doodl_nodes.nodes.doodl_nodes import DOODLOneStepGuidance
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=2)
    scorer = ConvScorer(2)
    mm.unload_all_models()
    with torch.inference_mode():
        sampler = DOODLOneStepGuidance().get_sampler(vae=vae, scorer=scorer, guidance_scale=10.0,
                                                     num_crops=0, cut_power=0.3, crop_reduction="auto",
                                                     seed=0)[0]
        out = SamplerCustom().sample(model, True, 0, 2.0, pos, neg, sampler, sigmas, tiny_latent("eps"))[0]
    assert torch.isfinite(out["samples"]).all()
    assert len(_entries(scorer.net)) == 1 and scorer.moves == 0
    mm.unload_all_models()
