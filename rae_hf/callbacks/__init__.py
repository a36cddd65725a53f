"""Trainer callbacks shared by all rae_hf trainers."""

from .ema import EMACallback

__all__ = ["EMACallback"]
