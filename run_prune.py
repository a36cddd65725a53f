#!/usr/bin/env python
"""Iterative pruning of ViT variants (RSST / Refill / magnitude) ending in a shrunk model; see
rae_hf/scripts/run_prune.py."""

from rae_hf.scripts.run_prune import main

if __name__ == "__main__":
    main()
