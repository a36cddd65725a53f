#!/usr/bin/env python
"""Train or evaluate JiT pixel diffusion (images or text-as-pixels): see `rae_hf/scripts/run_jit.py` or `--help`."""

from rae_hf.scripts.run_jit import main

if __name__ == "__main__":
    main()
