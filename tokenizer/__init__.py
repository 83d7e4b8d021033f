"""Causal video tokenizer (Cosmos-style causal 3D autoencoder with Gaussian or FSQ bottleneck).

Downstream code uses only::

    from tokenizer import load_tokenizer
    tok = load_tokenizer(path)          # exported folder or run folder
    z = tok.encode(video)               # video: float [B, 3, 1 + k*t, H, W] in [-1, 1]
    video = tok.decode(z)               # streams with chunk_frames=N

and the ``VideoTokenizer`` interface (``tokenizer.interface``).
"""

from tokenizer.config import PRESETS, TokenizerConfig, TokenizerLossConfig
from tokenizer.export import load_tokenizer, save_tokenizer
from tokenizer.interface import VideoTokenizer
from tokenizer.model import CausalVideoTokenizer, build_tokenizer

__all__ = [
    "PRESETS",
    "CausalVideoTokenizer",
    "TokenizerConfig",
    "TokenizerLossConfig",
    "VideoTokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "save_tokenizer",
]
