#!/usr/bin/env python
"""DINO/DINOv2 self-supervised pretraining with multi-crop: see `rae_hf/scripts/run_dino_pretrain.py`."""

from rae_hf.scripts.run_dino_pretrain import main

if __name__ == "__main__":
    main()
