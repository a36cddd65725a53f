"""Trainer callbacks shared by several rae_hf trainers; a method's own callbacks live beside its trainer
(`rae_hf/trainers/<method>_callbacks.py`)."""

from .csv_logger import CSVLoggerCallback
from .ema import EMACallback
from .image_evaluation import ImageEvaluationCallback, RFIDCallback, report_image
from .profiler import TorchProfilerCallback

__all__ = [
    "CSVLoggerCallback",
    "EMACallback",
    "ImageEvaluationCallback",
    "RFIDCallback",
    "TorchProfilerCallback",
    "report_image",
]
