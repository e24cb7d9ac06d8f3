"""docs/make_help_images.py rebuilds the committed help pictures (same names and sizes), and the
loss curve comes from a real DOODL run whose loss falls."""
from __future__ import annotations

import importlib.util

from PIL import Image

from tests.help import help_pages as hp

SCRIPT = hp.REPO / "docs" / "make_help_images.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_help_images", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_rebuilds_the_committed_images(tmp_path):
    info = _script().build(tmp_path)
    for name, size in info["files"].items():
        committed = hp.DOCS_DIR / "images" / name
        assert committed.is_file(), f"run python docs/make_help_images.py ({name} is not committed)"
        assert 0 < size <= hp.MAX_IMAGE_BYTES
        with Image.open(tmp_path / name) as new, Image.open(committed) as old:
            assert new.size == old.size and old.format == "PNG"
    # every picture the pages link is made by the script
    linked = {rel for node in hp.node_ids() if hp.page_path(node).is_file()
              for rel in hp.parse_page(hp.page_path(node)).images}
    assert {rel for rel in linked if rel.startswith("images/")} <= {f"images/{n}" for n in info["files"]}


def test_loss_curve_is_a_real_descending_run():
    run = _script().toy_doodl_run(iterations=12, steps=8)
    losses = run["losses"]
    assert len(losses) == 13  # 12 iterations + the final iterate
    assert losses[-1] < losses[0] and run["best_iteration"] > 0
    assert run["settings"] == {"lr": 1.0, "clip": 1e-3, "momentum": 0.9, "perturbation": 1e-4}
