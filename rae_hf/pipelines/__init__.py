"""diffusers pipelines of rae_hf models."""

from .pipeline_jit import JiTPipeline

__all__ = ["JiTPipeline"]
