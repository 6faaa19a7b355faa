"""fastnst: fast feed-forward neural style transfer (Johnson et al. 2016).

The top-level package is the light inference side (torch, torchvision, Pillow only)::

    from fastnst import stylize, load_model, TransformerNet

Training lives in :mod:`fastnst.training` (Lightning, Hydra, VGG) and is imported only when used.
"""

__version__ = "0.1.0"

from fastnst.model_file import load_model, save_model
from fastnst.net import TransformerNet, build_model
from fastnst.stylize import Stylizer, stylize

__all__ = ["TransformerNet", "Stylizer", "build_model", "load_model", "save_model", "stylize", "__version__"]
