"""Bad scorer inputs and hostile file names get clear errors naming what is wrong."""
import pytest
import torch

from doodl_nodes.scorers.combine import CombinedScorer
from doodl_nodes.scorers.symmetry import SymmetryScorer


def test_empty_scorer_combination_is_refused():
    with pytest.raises(ValueError, match="at least one scorer"):
        CombinedScorer([], [])
    with pytest.raises(ValueError, match="weights"):
        CombinedScorer([SymmetryScorer()], [1.0, 2.0])


def _tiny_encoder():
    import open_clip

    from doodl_nodes.scorers.encoders import OpenCLIPImageEncoder

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    return OpenCLIPImageEncoder(open_clip.model.CLIP(**cfg).eval())


def test_missing_reference_images_are_refused():
    from doodl_nodes.scorers.clip import CLIPImageScorer

    enc = _tiny_encoder()
    for refs in (None, torch.zeros(0, 3, 32, 32)):
        with pytest.raises(ValueError, match="reference"):
            CLIPImageScorer([enc], [1.0], reference_images=refs)


@pytest.mark.comfyui
def test_model_file_names_cannot_escape_the_model_folders(tmp_path):
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    import folder_paths

    from doodl_nodes.bridge import folders

    inside = tmp_path / "models" / "doodl_aesthetic"
    inside.mkdir(parents=True)
    secret = tmp_path / "secret.pth"
    secret.write_bytes(b"not for you")
    old = folder_paths.folder_names_and_paths.get("doodl_aesthetic")
    folder_paths.folder_names_and_paths["doodl_aesthetic"] = ([str(inside)], {".pth", ".safetensors"})
    try:
        for name in ("../../secret.pth", "../secret.pth", str(secret)):
            with pytest.raises(folders.MissingModelError, match="not found"):
                folders.resolve_file("doodl_aesthetic", name, "aesthetic head", "LAION")
    finally:
        if old is None:
            folder_paths.folder_names_and_paths.pop("doodl_aesthetic", None)
        else:
            folder_paths.folder_names_and_paths["doodl_aesthetic"] = old
