"""Trainer callbacks shared by all rae_hf trainers."""

from .csv_logger import CSVLoggerCallback
from .ema import EMACallback
from .profiler import TorchProfilerCallback
from .rfid import RFIDCallback, report_image

__all__ = ["CSVLoggerCallback", "EMACallback", "RFIDCallback", "TorchProfilerCallback", "report_image"]
