"""The embedded demo end to end on tiny sizes (the `tiny` preset: plumbing, not results)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from doodl_nodes.demo.cli import main
from doodl_nodes.demo.methods import CountingDenoiser
from doodl_nodes.demo.metrics import frechet_distance
from doodl_nodes.demo.settings import PRESETS

TIMING_KEYS = {"seconds", "total_seconds"}
FILES = ["results.md", "results.json", "samples_unguided.png", "samples_one_step.png",
         "samples_doodl.png", "samples_real.png", "loss_curves.png"]


def _numbers(obj, path=""):
    """Every number in a results tree except timings, as {path: value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in TIMING_KEYS or k in ("files", "command", "environment"):
                continue
            out.update(_numbers(v, f"{path}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{path}[{i}]"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[path] = obj
    return out


def _run(tmp_path, out, cache):
    argv = ["--preset", "tiny", "--device", "cpu", "--out", str(tmp_path / out),
            "--cache-dir", str(tmp_path / cache), "--no-progress"]
    assert main(argv) == 0
    return json.loads((tmp_path / out / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    first = _run(tmp, "out1", "cache1")
    cached = _run(tmp, "out2", "cache1")        # models loaded from the cache
    fresh = _run(tmp, "out3", "cache2")         # models trained again from scratch
    return tmp, first, cached, fresh


def test_files_written_and_readable(runs):
    tmp, first, _, _ = runs
    for name in FILES:
        path = tmp / "out1" / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            with Image.open(path) as im:
                assert im.size[0] > 32 and im.size[1] > 16
    md = (tmp / "out1" / "results.md").read_text()
    for label in ("unguided EDICT", "one-step guidance", "DOODL", "per-class FD"):
        assert label in md
    assert sorted((tmp / "cache1").glob("*.pt")) and len(list((tmp / "cache1").glob("*.pt"))) == 3


def test_numbers_finite(runs):
    _, first, _, _ = runs
    numbers = _numbers(first)
    assert numbers
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad
    for method in ("unguided", "one_step", "doodl", "real_train"):
        m = first["metrics"][method]
        assert 0.0 <= m["eval_accuracy"] <= 1.0
        assert m["fd_per_class"] >= 0.0 and m["fd_pooled"] >= 0.0


def test_doodl_loss_falls(runs):
    _, first, _, _ = runs
    ce = first["doodl"]["guide_ce"]
    assert len(ce) == PRESETS["tiny"].iterations
    assert ce[-1] < ce[0]
    # the images DOODL returns (after the last update) score better than where it started
    assert first["metrics"]["doodl"]["guide_ce"] < ce[0]


def test_model_evaluation_counts(runs):
    _, first, _, _ = runs
    s = PRESETS["tiny"]
    m = first["metrics"]
    chain = 2 * s.steps  # EDICT: two denoiser calls per step
    assert m["unguided"]["forward_per_image"] == chain and m["unguided"]["backward_per_image"] == 0
    assert m["one_step"]["forward_per_image"] == chain and m["one_step"]["backward_per_image"] == chain
    # checkpoint mode: forward pass + one recompute per step, one VJP per call; plus the final sample
    assert m["doodl"]["forward_per_image"] == s.iterations * 2 * chain + chain
    assert m["doodl"]["backward_per_image"] == s.iterations * chain
    assert len(first["doodl_sweep"]) == len(s.lrs) and first["chosen_doodl"]["lr"] in s.lrs


def test_same_seed_same_numbers(runs):
    _, first, cached, fresh = runs
    a, b, c = _numbers(first), _numbers(cached), _numbers(fresh)
    assert a == b, "reloading the cached models changed the results"
    assert a == c, "retraining from scratch with the same seeds changed the results"


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by (1, 2, 2): distance |dmu|^2 = 9
    assert frechet_distance(a, a + np.array([1.0, 2.0, 2.0])) == pytest.approx(9.0, rel=1e-6)
    # N(0, I) vs N(0, 4I) in 3-d: tr(I + 4I - 2*2I) = 3 (up to sampling error)
    b = rng.normal(size=(4000, 3)) * 2.0
    assert frechet_distance(a, b) == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_counting_denoiser_counts_forward_and_backward_rows():
    net = torch.nn.Linear(4, 4).requires_grad_(False)
    counter = CountingDenoiser(lambda z, s: net(z) * s)
    z = torch.randn(3, 4, requires_grad=True)
    out = counter(z, torch.tensor(0.5))
    with torch.no_grad():
        counter(torch.randn(5, 4), torch.tensor(0.5))
    assert (counter.forward, counter.backward) == (8, 0)
    torch.autograd.grad(out.sum(), z)
    assert counter.backward == 3
