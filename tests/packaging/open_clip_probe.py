"""Run inside a virtual environment with one open_clip version: use the pack's open_clip code paths.

    python tests/packaging/open_clip_probe.py    # prints one JSON line

What it exercises (everything in ``doodl_nodes/scorers/clip_models.py`` that depends on open_clip's
API): a tiny random open_clip model, saved as safetensors, loaded back (1) as a checkpoint file with
``load_open_clip`` and (2) as a Hugging Face style folder (``open_clip_config.json`` + weights) with
``load_clip_folder``, which uses the ``local-dir:`` schema, ``create_model(load_weights=False)`` and
``get_tokenizer("local-dir:...")``; then a CLIP text scorer's loss and gradient. Each step's result
or error goes into the JSON; nothing is downloaded.
"""
from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TINY = {"embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def main() -> int:
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = {"version": open_clip.__version__, "file": open_clip.__file__, "steps": {}}
    root = Path(tempfile.mkdtemp(prefix="doodl_oc_probe_"))
    arch = "DoodlProbeCLIP"
    (root / f"{arch}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(str(root / f"{arch}.json"))
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    ckpt = root / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    x = torch.rand(2, 3, 32, 32)

    from doodl_nodes.scorers.clip import CLIPTextScorer
    from doodl_nodes.scorers.clip_models import load_clip_folder, load_open_clip
    from doodl_nodes.scorers.preprocess import normalize

    def step(name, fn):
        try:
            out["steps"][name] = {"ok": True, **(fn() or {})}
        except Exception as exc:  # report, keep going
            out["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:600],
                                  "where": traceback.format_exc().splitlines()[-3:]}

    def same_embedding(bundle):
        img = bundle.image
        with torch.no_grad():
            ref = model.encode_image(normalize(x, img.mean, img.std))
            err = float((img(x) - ref).abs().max())
        assert err < 1e-5, err
        return {"max_abs_err": err}

    step("checkpoint_file", lambda: same_embedding(load_open_clip(arch, checkpoint=ckpt)))

    folder = root / "tiny-open-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    (folder / "open_clip_model.safetensors").write_bytes(ckpt.read_bytes())

    def folder_and_scorer():
        bundle = load_clip_folder(folder)
        res = same_embedding(bundle)
        scorer = CLIPTextScorer.from_text(bundle.image, bundle.text, "a photo of a cat")
        images = torch.rand(1, 3, 40, 40, requires_grad=True)
        loss = scorer.loss(images)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and float(images.grad.abs().sum()) > 0
        return {**res, "loss": float(loss.detach().sum())}

    step("hf_style_folder_local_dir", folder_and_scorer)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
