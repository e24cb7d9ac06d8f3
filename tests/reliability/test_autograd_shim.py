"""The inference-tensor shim, on plain torch modules (no ComfyUI needed): the failures
docs/maintainers/comfyui-internals.md §1.1 describes inside ComfyUI, reproduced and fixed here."""
import pytest
import torch

from doodl_nodes.bridge.autograd import autograd_ready, clone_tensor_tree, make_autograd_safe, needs_clone


def _inference_module():
    with torch.inference_mode():
        m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    return m.eval()


def test_inference_weights_break_backward_until_made_safe():
    m = _inference_module()
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors"):
        m(x).sum().backward()
    assert not autograd_ready(m)
    assert make_autograd_safe(m) > 0
    assert autograd_ready(m) and all(not p.requires_grad for p in m.parameters())
    m(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert make_autograd_safe(m) == 0  # nothing left to replace on a second run


def test_hybrid_parameters_are_detected():
    m = torch.nn.Linear(2, 2)
    with torch.inference_mode():
        m.weight.data = torch.randn(2, 2)  # what nn.Module.to() does under inference mode
    assert needs_clone(m.weight) and not needs_clone(m.bias)
    make_autograd_safe(m)
    assert not needs_clone(m.weight)


class _Cond:  # the shape of ComfyUI's CONDRegular: a payload and _copy_with
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return _Cond(cond)


def test_clone_tensor_tree_clones_nested_tensors_and_cond_wrappers():
    with torch.inference_mode():
        t = torch.ones(2)
    tree = {"a": [t, (t, 3)], "c": _Cond(t), "s": "x"}
    out = clone_tensor_tree(tree)
    assert not out["a"][0].is_inference() and not out["a"][1][0].is_inference()
    assert not out["c"].cond.is_inference() and out["s"] == "x" and out["a"][1][1] == 3
    assert torch.equal(out["c"].cond, t)
