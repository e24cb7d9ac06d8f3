"""WS-DAN: published checkpoint layout round trip, shapes per dataset, refusal of pickled code."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from doodl_nodes.core.crops import CropConfig, make_crops, resize_square
from doodl_nodes.scorers.weights import UnsafeWeightsError, WeightsFileError
from doodl_nodes.scorers.wsdan import WSDAN, WSDANScorer, load_wsdan

DATASETS = {"bird": 200, "dog": 120, "aircraft": 100}


@pytest.fixture(scope="module")
def reference():
    """A randomly initialized WS-DAN (CUB layout) with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = WSDAN(200)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def _published_checkpoint(model: WSDAN, num_classes: int, drop_batches_tracked=False):
    """What WS_DAN_PyTorch's train_bap.py saves: DataParallel keys, optimizer, feature centers."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if num_classes != model.num_classes:
        sd["fc_new.weight"] = torch.randn(num_classes, sd["fc_new.weight"].shape[1]) * 0.01
        sd["fc_new.bias"] = torch.randn(num_classes) * 0.01
    if drop_batches_tracked:
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    return {"epoch": 80,
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "best_prec1": torch.tensor([88.2]),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "momentum": 0.9,
                                                          "weight_decay": 1e-5, "params": [0]}]},
            "center": torch.zeros(num_classes, 8)}


def test_published_checkpoint_round_trips(tmp_path, reference):
    torch.save(_published_checkpoint(reference, 200, drop_batches_tracked=True),
               tmp_path / "bird.pth.tar")
    loaded = load_wsdan(tmp_path / "bird.pth.tar")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        att_a, raw_a, logits_a = reference(x)
        att_b, raw_b, logits_b = loaded(x)
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)
    assert att_b.shape == (2, 32, 4, 4) and raw_b.shape == (2, 32 * 768)
    torch.testing.assert_close(raw_b.norm(dim=-1), torch.ones(2))
    # a plain (unprefixed) safetensors copy of the weights loads too
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(tmp_path / "bird.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(load_wsdan(tmp_path / "bird.safetensors")(x)[2], logits_a)


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_logit_shapes_per_dataset(tmp_path, reference, dataset):
    classes = DATASETS[dataset]
    torch.save(_published_checkpoint(reference, classes), tmp_path / f"{dataset}.pth.tar")
    model = load_wsdan(tmp_path / f"{dataset}.pth.tar")
    assert model.num_classes == classes and model.num_parts == 32
    with torch.no_grad():
        assert model(torch.rand(3, 3, 80, 80))[2].shape == (3, classes)
    scorer = WSDANScorer(model, classes - 1)
    assert str(classes) in scorer.name or "birds" in scorer.name or "Dogs" in scorer.name \
        or "Aircraft" in scorer.name
    with pytest.raises(ValueError, match=f"has {classes} classes"):
        WSDANScorer(model, classes)


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, reference):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = _published_checkpoint(reference, 200)
    ckpt["config"] = Payload()
    torch.save(ckpt, tmp_path / "bird.pth.tar")
    with pytest.raises(UnsafeWeightsError, match="refusing to load"):
        load_wsdan(tmp_path / "bird.pth.tar")
    assert not marker.exists()


def test_wrong_layout_is_refused(tmp_path):
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(10, 2048)}}, tmp_path / "x.pth")
    with pytest.raises(WeightsFileError, match="not a WS-DAN"):
        load_wsdan(tmp_path / "x.pth")


def test_scorer_loss_is_cross_entropy_over_crops(reference):
    scorer = WSDANScorer(reference, 17, input_size=96)
    images = torch.rand(2, 3, 120, 100)
    crops = CropConfig(num_crops=3, cut_power=0.5, reduction="mean")
    got = scorer.loss(images, crops, torch.Generator().manual_seed(4))
    px = make_crops(images, 96, 3, 0.5, torch.Generator().manual_seed(4))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = reference((px - mean) / std)[2]
        ce = F.cross_entropy(logits, torch.full((6,), 17), reduction="none").reshape(3, 2)
    torch.testing.assert_close(got, ce.mean(0))
    scores = scorer.scores(images)
    with torch.no_grad():
        p = reference((resize_square(images, 96) - mean) / std)[2].softmax(-1)[:, 17]
    torch.testing.assert_close(scores["class_probability"], p)
    assert scores["top1_class"].shape == (2,)


def test_gradient_at_512px_and_descent(reference):
    scorer = WSDANScorer(reference, 3)  # the classifier's 512 px input
    x = torch.rand(1, 3, 512, 512, requires_grad=True)
    loss = scorer.loss(x, CropConfig(num_crops=0))
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in reference.parameters())
    small = WSDANScorer(reference, 3, input_size=96)
    y = torch.rand(1, 3, 96, 96, requires_grad=True)
    first = small.loss(y, CropConfig(num_crops=0))
    for _ in range(5):
        y.grad = None
        small.loss(y, CropConfig(num_crops=0)).sum().backward()
        with torch.no_grad():
            y -= 0.02 * y.grad / y.grad.abs().max()
    assert small.loss(y, CropConfig(num_crops=0)).item() < first.item()
