"""The text-as-pixels task of JiT: an invertible codec text -> tokens -> image, text datasets and recovery metrics."""

from .codec import SCHEMES, TextPixelCodec
from .data import TextToPixels, load_text_splits, make_quickstart_texts, with_text_pixels
from .metrics import sequence_accuracy, token_accuracy

__all__ = [
    "SCHEMES",
    "TextPixelCodec",
    "TextToPixels",
    "load_text_splits",
    "make_quickstart_texts",
    "sequence_accuracy",
    "token_accuracy",
    "with_text_pixels",
]
