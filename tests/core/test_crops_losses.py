import math

import pytest
import torch

from doodl_nodes.core.crops import CropConfig, crop_boxes, make_crops, resize_square
from doodl_nodes.core.losses import reduce_over_crops, spherical_distance


def test_crops_shape_layout_and_gradient():
    img = torch.rand(2, 3, 40, 30, requires_grad=True)
    crops = make_crops(img, 16, num_crops=5, cut_power=0.3, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (10, 3, 16, 16)
    crops.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    # each image draws its own boxes, image 0 first (as the released code, which calls its loss
    # once per EDICT image); crop-major layout: row k*B + b is crop k of image b
    g = torch.Generator().manual_seed(0)
    boxes = [crop_boxes(40, 30, 16, 5, 0.3, g) for _ in range(2)]
    assert boxes[0] != boxes[1]
    for b in range(2):
        for k in range(5):
            top, left, side = boxes[b][k]
            expect = resize_square(img[b:b + 1, :, top:top + side, left:left + side], 16)
            assert torch.equal(crops[k * 2 + b], expect[0])


def test_crop_sizes_follow_cut_power_and_stay_inside():
    big = [b[2] for b in crop_boxes(64, 64, 8, 400, 0.1, torch.Generator().manual_seed(1))]
    small = [b[2] for b in crop_boxes(64, 64, 8, 400, 3.0, torch.Generator().manual_seed(1))]
    assert sum(big) / 400 > sum(small) / 400 + 15
    for top, left, side in crop_boxes(50, 70, 8, 200, 0.3, torch.Generator().manual_seed(2)):
        assert 8 <= side <= 50 and 0 <= top <= 50 - side and 0 <= left <= 70 - side


def test_no_crops_is_a_plain_resize_and_deterministic():
    img = torch.rand(1, 3, 32, 32)
    assert torch.equal(make_crops(img, 16, num_crops=0), resize_square(img, 16))
    assert torch.allclose(resize_square(img, 16), torch.nn.functional.avg_pool2d(img, 2))
    up = resize_square(torch.rand(1, 3, 8, 8), 16)
    assert up.shape == (1, 3, 16, 16)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(make_crops(img, 8, 4, 0.3, g()), make_crops(img, 8, 4, 0.3, g()))


def test_spherical_distance_values():
    a = torch.tensor([1.0, 0.0])
    assert float(spherical_distance(a, a)) == pytest.approx(0.0, abs=1e-7)
    # orthogonal: chord sqrt(2), 2*asin(sqrt(2)/2)^2 = 2*(pi/4)^2
    assert float(spherical_distance(a, torch.tensor([0.0, 3.0]))) == pytest.approx(2 * (math.pi / 4) ** 2)
    assert float(spherical_distance(a, -a)) == pytest.approx(math.pi ** 2 / 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    spherical_distance(v, torch.tensor([1.0, 1.0])).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_reduce_over_crops():
    v = torch.tensor([3.0, 1.0, 2.0, 5.0, 0.5, 9.0])  # 3 crops x 2 images, crop-major
    assert torch.equal(reduce_over_crops(v, 3, "min"), torch.tensor([0.5, 1.0]))
    assert torch.allclose(reduce_over_crops(v, 3, "mean"), torch.tensor([5.5 / 3, 15.0 / 3]))
    assert torch.equal(reduce_over_crops(v, 1), v)
    with pytest.raises(ValueError):
        reduce_over_crops(v, 4)
    with pytest.raises(ValueError):
        reduce_over_crops(v, 3, "max")


def test_crop_config_validation():
    assert CropConfig() == CropConfig(16, 0.3, "auto")
    for bad in ({"num_crops": -1}, {"cut_power": 0}, {"reduction": "median"}):
        with pytest.raises(ValueError):
            CropConfig(**bad)
