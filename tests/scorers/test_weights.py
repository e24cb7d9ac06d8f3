"""Weight files: safetensors and weights-only pickles load; pickled code is refused unexecuted."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from doodl_nodes.scorers.weights import (UnsafeWeightsError, WeightsFileError, extract_state_dict,
                                         load_weights_file, strip_prefix)


class _CreatesMarker:
    """Unpickling this calls open(marker, "w"): the marker file proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_safetensors_and_weights_only_pickles_load(tmp_path):
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 4},
               tmp_path / "m.pth.tar")
    got = load_weights_file(tmp_path / "m.safetensors")
    assert set(got) == set(sd) and torch.equal(got["a.weight"], sd["a.weight"])
    ckpt = load_weights_file(tmp_path / "m.pth.tar")
    inner = strip_prefix(extract_state_dict(ckpt), "module.")
    assert set(inner) == set(sd) and torch.equal(inner["a.bias"], sd["a.bias"])


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _CreatesMarker(marker)}, path)
    with pytest.raises(UnsafeWeightsError, match="refusing to load") as info:
        load_weights_file(path, hint="test file")
    assert not marker.exists()
    message = str(info.value)
    assert "test file" in message and "open" in message and str(path) in message


def test_missing_and_unsupported_files_say_which_file(tmp_path):
    with pytest.raises(WeightsFileError, match="not found: .*nope.safetensors.*from here"):
        load_weights_file(tmp_path / "nope.safetensors", hint="from here")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x00")
    with pytest.raises(WeightsFileError, match="unsupported weight file type"):
        load_weights_file(onnx)
    with pytest.raises(WeightsFileError, match="no state dict"):
        extract_state_dict({"epoch": 3})
