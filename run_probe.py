#!/usr/bin/env python
"""Evaluate a vision encoder's representations (linear probe, kNN, LoRA, full): see `rae_hf/scripts/run_probe.py`."""

from rae_hf.scripts.run_probe import main

if __name__ == "__main__":
    main()
