"""DOODL Optimize with the preference rewards, through the real ComfyUI (tiny models, CPU).

ReNO's weighting (HPS 5.0, ImageReward 1.0, PickScore 0.05) as the optimized objective, and a
preference reward as the held-out monitor: the monitor is recorded every iteration (history, ui,
summary) and adding it leaves the optimized trajectory bit-identical.
"""
import json

import pytest
import torch

from tests.comfyui_env import require_comfyui
from tests.scorers import preference_files as pf

pytestmark = pytest.mark.comfyui
PROMPT = "a red fox sitting on a blue book"


@pytest.fixture(scope="module")
def setup():
    require_comfyui()
    from tests.comfy.setups import tiny_setup

    return tiny_setup("eps", steps=3)


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    from doodl_nodes.scorers.hps import HPSScorer, load_hps
    from doodl_nodes.scorers.imagereward import ImageRewardScorer, load_imagereward
    from doodl_nodes.scorers.pickscore import PickScoreScorer, load_pickscore

    root = tmp_path_factory.mktemp("rewards")
    arch = pf.register_tiny_hps(root)
    with torch.inference_mode(False):
        return {
            "hps": HPSScorer.from_bundle(load_hps(pf.write_hps(root / "hps.pt", arch, seed=1), arch), PROMPT),
            "ir": ImageRewardScorer(load_imagereward(pf.write_imagereward(root / "ir", seed=2)), PROMPT),
            "pick": PickScoreScorer.from_bundle(load_pickscore(pf.write_hf_clip(root / "pick", seed=3)), PROMPT),
        }


def _doodl(setup, scorer, **overrides):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = setup
    args = dict(model=model, vae=vae, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas, scorer=scorer,
                seed=0, iterations=3, lr=5.0, momentum=0.9, clip=1e-2, perturbation=1e-3, renormalize=True,
                tie_latents=True, start_step=0, grad_mode="checkpoint", num_crops=2, cut_power=0.3,
                crop_reduction="auto", score_images="both", precision="fp32", latent=tiny_latent("eps"))
    args.update(overrides)
    with torch.inference_mode():
        return DOODLOptimize().optimize(**args)


def test_reno_weighting_optimizes_and_a_preference_monitor_changes_nothing(setup, rewards):
    from doodl_nodes.scorers.combine import CombinedScorer

    objective = CombinedScorer([rewards["hps"], rewards["ir"], rewards["pick"]], [5.0, 1.0, 0.05])
    monitor = CombinedScorer([rewards["ir"], rewards["pick"]], [1.0, 1.0])
    plain = _doodl(setup, objective)
    watched = _doodl(setup, objective, monitor=monitor)
    for i in (0, 1):
        assert torch.equal(plain["result"][i]["samples"], watched["result"][i]["samples"])
    assert torch.equal(plain["result"][5].x, watched["result"][5].x)
    hp, hw = json.loads(plain["result"][4]), json.loads(watched["result"][4])
    assert hp["losses"] == hw["losses"] and hw["status"] == "completed"
    assert set(hw["scores"]) == {"1.hps", "2.imagereward", "3.pickscore"}
    mon = hw["monitor"]
    assert len(mon["losses"]) == len(hw["losses"]) + 1 == len(mon["scores"])
    for losses, scores in zip(mon["losses"], mon["scores"]):
        assert set(scores) == {"1.imagereward", "2.pickscore"}
        # the monitor's loss is the sum of -score over its parts (no crops: the models' own preprocessing)
        assert losses == pytest.approx(-(scores["1.imagereward"] + scores["2.pickscore"]), rel=1e-5, abs=1e-5)
    assert watched["ui"]["doodl_monitor"] == mon["losses"]
    summary = watched["ui"]["doodl_summary"][0]["monitor"]
    assert summary["best"]["iteration"] == hw["best_iteration"] and set(summary["last"]["scores"]) == set(mon["scores"][0])


def test_optimizing_one_reward_raises_it(setup, rewards):
    """Gradient descent on -HPS (no perturbation, no crops) raises the HPS of the decoded image."""
    out = _doodl(setup, rewards["hps"], iterations=4, perturbation=0.0, num_crops=0, lr=20.0,
                 monitor=rewards["hps"])
    h = json.loads(out["result"][4])
    scores = [s["hps"] for s in h["monitor"]["scores"]]
    assert h["losses"][-1] < h["losses"][0], h["losses"]
    assert scores[-1] > scores[0], scores
    # the monitor sees the same images as the objective: same loss at every iteration
    assert h["monitor"]["losses"][:len(h["losses"])] == pytest.approx(h["losses"], rel=1e-5, abs=1e-6)
