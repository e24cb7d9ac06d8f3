"""The pack inside a real headless ComfyUI server: registration and an end-to-end DOODL prompt."""
import pytest

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui

PACK_NODES = ["EDICTSampler", "EDICTInversion", "EDICTGenerate", "DOODLOptimize", "DOODLOneStepGuidance",
              "DOODLCLIPTextScorer", "DOODLCLIPImageScorer", "DOODLAestheticScorer", "DOODLWSDANScorer",
              "DOODLSymmetryScorer", "DOODLCombineScorers", "DOODLPickScoreScorer", "DOODLHPSScorer",
              "DOODLImageRewardScorer"]


@pytest.fixture(scope="module")
def server():
    require_comfyui()
    from tests.comfy.server_harness import session_server

    srv = session_server()
    assert srv.pack_import_errors() == [], srv.log_tail()
    return srv


def test_object_info_lists_every_node_with_docs(server):
    info = server.object_info()
    for name in PACK_NODES:
        assert name in info, name
        node = info[name]
        assert node["description"], name
        assert node["category"].startswith("DOODL"), name
        for section in ("required", "optional"):
            for inp, spec in node["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"


def doodl_prompt(unet, vae, *, iterations=2, steps=2, seed=0):
    """API prompt: tiny SD1 UNet + random 768-wide conds (test-only node) -> DOODLOptimize with the
    symmetry scorer -> VAEDecode of the best latent -> SaveImage, plus the iterate strip."""
    cond = lambda s: {"class_type": "DOODLTestRandomConditioning",  # noqa: E731
                      "inputs": {"width": 768, "tokens": 77, "pooled_width": 768, "seed": s}}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": cond(1), "3": cond(2),
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras",
                                                          "steps": steps, "denoise": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "7": {"class_type": "DOODLSymmetryScorer", "inputs": {"axis": "left-right"}},
        "8": {"class_type": "DOODLOptimize", "inputs": {
            "model": ["1", 0], "vae": ["6", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 2.0,
            "sigmas": ["5", 0], "scorer": ["7", 0], "seed": seed, "iterations": iterations, "lr": 5.0,
            "momentum": 0.9, "clip": 0.01, "perturbation": 0.0, "renormalize": True, "tie_latents": True,
            "start_step": 0, "grad_mode": "checkpoint", "num_crops": 0, "cut_power": 0.3,
            "crop_reduction": "min", "score_images": "both", "precision": "fp32", "latent": ["4", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 1], "vae": ["6", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "doodl_e2e"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["8", 2]}},
    }


def test_doodl_prompt_runs_end_to_end(server):
    files = server.add_tiny_models(("eps",))
    res = server.run_prompt(doodl_prompt(files.unets["eps"], files.vaes["eps"]), timeout=180)
    assert res.ok, res.describe()
    summary = res.outputs["8"]
    assert len(summary["doodl_losses"]) == 2
    assert summary["doodl_summary"][0]["status"] == "completed"
    pngs = server.images(res)
    assert len(pngs) == 2 and all(p[:4] == b"\x89PNG" for p in pngs)
