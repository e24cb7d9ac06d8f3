"""What the SDXL / Flux workflows claim, checked on the CPU server with their tiny model files
(``model_files_arch.py``), beyond "it runs" (``test_workflow_runs.py`` runs every workflow)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.comfyui_env import require_comfyui
from tests.workflows import workflow_tools as wt
from tests.workflows.test_workflow_runs import _images

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def server():
    require_comfyui()
    from tests.workflows.workflow_server import workflow_server

    return workflow_server()


def test_edit_workflow_with_the_source_prompt_is_an_exact_round_trip(server):
    """doodl10 with the edit prompt set to the source prompt: on SDXL and on Flux the right half of
    'input | edit' is the plain VAE round trip of the input (at most 1 of 255 apart)."""
    prompt, _ = wt.apply_test_overrides(wt.load_api("doodl10_edict_edit_sdxl_flux"))
    by_title = {v["_meta"]["title"]: k for k, v in prompt.items()}
    checks = {}
    for i, branch in enumerate(("sdxl", "flux")):
        src, tgt = by_title[f"{branch}: source prompt"], by_title[f"{branch}: edit prompt"]
        prompt[tgt]["inputs"]["text"] = prompt[src]["inputs"]["text"]
        encode = prompt[by_title[f"{branch}: invert with the source prompt"]]["inputs"]["latent"][0]
        vae = prompt[encode]["inputs"]["vae"]
        prompt[f"90{i}"] = {"class_type": "VAEDecode", "inputs": {"samples": [encode, 0], "vae": vae}}
        prompt[f"91{i}"] = {"class_type": "SaveImage", "inputs": {"images": [f"90{i}", 0],
                                                                  "filename_prefix": f"plain_vae_{branch}"}}
        save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage"
                    and v["_meta"]["title"] == f"{branch}: input | edit")
        stitch = next(k for k, v in prompt.items() if v["class_type"] == "ImageStitch"
                      and v["_meta"]["title"] == f"{branch}: input | edit")
        checks[branch] = (save, f"91{i}", prompt[stitch]["inputs"]["spacing_width"])
    result = server.run_prompt(prompt, timeout=240)
    assert result.ok, result.describe() + "\n" + server.log_tail(3000)
    for branch, (save, plain, spacing) in checks.items():
        (stitched,) = _images(server, result, save)
        (reference,) = _images(server, result, plain)
        h, w, _ = reference.shape
        reconstruction = stitched[:, w + spacing:]
        assert np.abs(reconstruction - reference).max() <= 1, branch
        assert np.abs(stitched[:, :w] - reference).mean() > 1.0, branch   # the left half is the input


@pytest.mark.parametrize("iterations", [2, 0])
def test_transfer_workflow_samples_sdxl_base_from_the_optimized_noise(server, iterations):
    """doodl11: SDXL base runs from DOODL's NOISE output, which is the best iterate's starting noise:
    with no iteration (or when the best iterate is the first) that is the seed's noise, so SDXL base
    gives the same image as from RandomNoise(seed); once the optimization moved it, another one
    (tests/comfy/test_few_step.py checks in process that the NOISE output regenerates a moved best
    iterate exactly)."""
    prompt, _ = wt.apply_test_overrides(wt.load_api("doodl11_reno_transfer_sdxl"))
    (doodl_id,) = [k for k, v in prompt.items() if v["class_type"] == "DOODLOptimize"]
    prompt[doodl_id]["inputs"]["iterations"] = iterations
    result = server.run_prompt(prompt, timeout=240)
    assert result.ok, result.describe() + "\n" + server.log_tail(3000)
    saves = {v["_meta"]["title"]: _images(server, result, k)[0] for k, v in prompt.items()
             if v["class_type"] in ("SaveImage", "PreviewImage")}
    after, before = saves["SDXL base, optimized noise"], saves["SDXL base, seed noise"]
    assert after.shape == before.shape == saves["SDXL-Turbo, best iterate"].shape == (64, 64, 3)
    (summary,) = result.outputs[doodl_id]["doodl_summary"]
    if summary["best_iteration"] == 0:   # always with 0 iterations; by chance with random tiny models
        assert np.abs(after - before).max() <= 1
    else:
        assert np.abs(after - before).mean() > 0
