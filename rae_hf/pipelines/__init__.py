"""diffusers pipelines of rae_hf models."""

from .pipeline_jit import JiTPipeline
from .pipeline_rae_dit import RAEDiTPipeline

__all__ = ["JiTPipeline", "RAEDiTPipeline"]
