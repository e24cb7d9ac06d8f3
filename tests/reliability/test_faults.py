"""Numerical faults, out-of-memory and interrupts inside DOODL, in-process against the real ComfyUI
(under torch.inference_mode(), as execution.py runs nodes), with scorers that misbehave on cue."""
import json
import math

import pytest
import torch

from doodl_nodes.scorers.base import DoodlScorer
from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def setup():
    require_comfyui()
    from tests.comfy.setups import tiny_setup

    return tiny_setup("eps", steps=2)


class FaultyScorer(DoodlScorer):
    """Symmetry loss, except on call ``at`` (1-based) where it does ``fault``."""

    name = "faulty"

    def __init__(self, fault=None, at=2):
        from doodl_nodes.scorers.symmetry import SymmetryScorer

        self.inner, self.fault, self.at, self.calls = SymmetryScorer(), fault, at, 0

    def loss(self, images, crops=None, generator=None):
        self.calls += 1
        loss = self.inner.loss(images)
        if self.calls >= self.at:
            if self.fault == "nan":
                return loss * float("nan")
            if self.fault == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if self.fault == "interrupt":
                import comfy.model_management

                comfy.model_management.interrupt_current_processing(True)
        if self.fault == "constant":
            return torch.full_like(loss, 0.5).detach()
        return loss

    def scores(self, images):
        return self.inner.scores(images)



def _run(setup, scorer, iterations=3):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = setup
    with torch.inference_mode():
        return DOODLOptimize().optimize(model=model, vae=vae, positive=pos, negative=neg, cfg=2.0,
                                        sigmas=sigmas, scorer=scorer, seed=0, iterations=iterations, lr=5.0,
                                        momentum=0.9, clip=1e-2, perturbation=0.0, renormalize=True,
                                        tie_latents=True, start_step=0, grad_mode="checkpoint", num_crops=0,
                                        cut_power=0.3, crop_reduction="min", score_images="x",
                                        precision="fp32", latent=tiny_latent("eps"))


def _finite_outputs(out):
    final, best, strip, plot, history, _, _ = out["result"]
    return all(torch.isfinite(t).all() for t in (final["samples"], best["samples"], strip, plot))


def test_nan_loss_stops_and_returns_the_best_iterate(setup):
    out = _run(setup, FaultyScorer("nan", at=3), iterations=5)
    h = json.loads(out["result"][4])
    assert h["status"] == "nonfinite" and len(h["losses"]) == 2
    assert any("not finite" in w for w in h["warnings"])
    assert _finite_outputs(out) and math.isfinite(h["best_loss"])
    assert torch.equal(out["result"][0]["samples"], out["result"][1]["samples"])  # final = best


def test_nan_at_the_first_iteration_is_a_clear_error(setup):
    with pytest.raises(RuntimeError, match="very first iteration"):
        _run(setup, FaultyScorer("nan", at=1))


def test_zero_gradient_is_reported(setup):
    out = _run(setup, FaultyScorer("constant", at=99), iterations=2)
    h = json.loads(out["result"][4])
    assert any("exactly zero" in w for w in h["warnings"]) and _finite_outputs(out)


def test_out_of_memory_names_the_knobs_and_the_next_run_works(setup):
    from doodl_nodes.bridge.doodl_run import DoodlOutOfMemory

    scorer = FaultyScorer("oom", at=2)
    with pytest.raises(DoodlOutOfMemory) as err:
        _run(setup, scorer)
    msg = str(err.value)
    for knob in ("num_crops", "smaller image", "decoder_checkpointing", "score_images"):
        assert knob in msg, knob
    out = _run(setup, FaultyScorer(None), iterations=2)
    assert json.loads(out["result"][4])["status"] == "completed"


def test_interrupt_stops_within_one_chain_step_and_the_next_run_works(setup):
    import comfy.model_management as mm

    model = setup[0]
    calls = []
    handle = model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(mm.processing_interrupted()))
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(setup, FaultyScorer("interrupt", at=1), iterations=5)
        # the flag was raised inside the objective; no model call ran after it
        assert calls and not any(calls)
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
    out = _run(setup, FaultyScorer(None), iterations=1)
    assert json.loads(out["result"][4])["status"] == "completed"


def test_interrupt_during_edict_generation(setup):
    import comfy.model_management as mm

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_latent

    model, _, pos, neg, sigmas = setup
    seen = []

    def hook(*_):
        seen.append(1)
        if len(seen) == 2:
            mm.interrupt_current_processing(True)

    handle = model.model.diffusion_model.register_forward_hook(hook)
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas, seed=0,
                                     p=0.93, leapfrog=True, latent=tiny_latent("eps"))
        assert len(seen) == 2
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)
