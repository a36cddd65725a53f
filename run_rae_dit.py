#!/usr/bin/env python
"""RAE stage 2: train or evaluate a DiT-DH on RAE latents: see `rae_hf/scripts/run_rae_dit.py` or `--help`."""

from rae_hf.scripts.run_rae_dit import main

if __name__ == "__main__":
    main()
