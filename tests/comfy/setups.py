"""The common setup of the in-process node tests: a tiny model, its VAE, two conditionings, SIGMAS."""
import torch


FLOW_KINDS = ("flow", "flux", "flux_schnell")


def scheduler_for(kind: str) -> str:
    """The scheduler the node tests use: ComfyUI's "simple" for flow models, "karras" otherwise."""
    return "simple" if kind in FLOW_KINDS else "karras"


def tiny_setup(kind: str = "eps", steps: int = 3):
    """``(model, vae, positive, negative, sigmas)`` built under inference mode, as loaders run."""
    import comfy.samplers

    from tests.comfy.tiny_models import load_tiny_model, tiny_conditioning, tiny_vae

    with torch.inference_mode():
        model = load_tiny_model(kind)
        vae = tiny_vae(kind)
        ms = model.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(ms, scheduler_for(kind), steps)
    return model, vae, tiny_conditioning(kind, seed=1), tiny_conditioning(kind, seed=2), sigmas
