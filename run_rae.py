#!/usr/bin/env python
"""Train (stage 1) or evaluate a Representation Autoencoder: see `rae_hf/scripts/run_rae.py` or `--help`."""

from rae_hf.scripts.run_rae import main

if __name__ == "__main__":
    main()
