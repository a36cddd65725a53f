"""Trainer callbacks shared by all rae_hf trainers."""

from .ema import EMACallback
from .profiler import TorchProfilerCallback

__all__ = ["EMACallback", "TorchProfilerCallback"]
