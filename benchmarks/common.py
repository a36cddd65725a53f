"""What the benchmark scripts share: peak memory and printing/saving one result row."""

from __future__ import annotations

import json
import resource
import sys

import torch


def peak_memory_gib(device: torch.device) -> float:
    """`torch.cuda.max_memory_allocated` on CUDA (tensors only); the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # ru_maxrss is in KiB on Linux


def emit(row: str, header: str | None, result: dict, settings: dict, json_out: str | None) -> None:
    """Print the Markdown row (after the header when asked) and optionally write the result and settings as JSON."""
    if header:
        print(header)
    print(row)
    sys.stdout.flush()
    if json_out:
        with open(json_out, "w") as f:
            json.dump({**result, "settings": settings}, f, indent=2)
