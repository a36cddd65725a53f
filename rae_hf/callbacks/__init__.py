"""Trainer callbacks shared by all rae_hf trainers."""

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
