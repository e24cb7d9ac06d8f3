"""Image -> loss modules (CLIP text, CLIP image ensemble, aesthetic heads, WS-DAN, symmetry, weighted sums). No ComfyUI import.

open_clip, transformers and torchvision are imported lazily, when a model is built, so importing this
package is cheap. See README.md beside this file for each scorer's loss, score and weight files.
"""
from .base import DoodlScorer, CropScorer
from .weights import WeightsFileError, UnsafeWeightsError, load_weights_file
from .encoders import ImageEncoder, OpenCLIPImageEncoder, HFCLIPImageEncoder, TextEncoder
from .clip import CLIPTextScorer, CLIPImageScorer
from .aesthetic import AestheticScorer, load_aesthetic_head
from .wsdan import WSDANScorer, load_wsdan
from .symmetry import SymmetryScorer
from .combine import CombinedScorer

__all__ = ["DoodlScorer", "CropScorer", "WeightsFileError", "UnsafeWeightsError",
           "load_weights_file", "ImageEncoder", "OpenCLIPImageEncoder", "HFCLIPImageEncoder",
           "TextEncoder", "CLIPTextScorer", "CLIPImageScorer", "AestheticScorer",
           "load_aesthetic_head", "WSDANScorer", "load_wsdan", "SymmetryScorer", "CombinedScorer"]
