"""The offline quickstarts' inputs, made on first use: tiny random-weight models and a small synthetic image set
under one folder (`runs/quickstart/` in the recipes), reused by later runs."""

from __future__ import annotations

import os

from rae_hf.tools.make_dummy_dataset import write_dummy_dataset

QUICKSTART_SPLITS = {"train": 64, "validation": 16, "test": 16}


def ensure_tiny_models(folder: str, image_size: int = 64) -> str:
    """`folder/{encoder,discriminator,inception-random.safetensors}`, written unless already there."""
    from rae_hf.metrics import save_random_inception_weights
    from rae_hf.tools.make_tiny_models import make_tiny_discriminator, make_tiny_encoder

    if not os.path.isfile(os.path.join(folder, "encoder", "config.json")):
        make_tiny_encoder(os.path.join(folder, "encoder"), image_size=image_size)
    if not os.path.isfile(os.path.join(folder, "discriminator", "config.json")):
        make_tiny_discriminator(os.path.join(folder, "discriminator"))
    inception = os.path.join(folder, "inception-random.safetensors")
    if not os.path.isfile(inception):
        save_random_inception_weights(inception)
    return folder


def ensure_image_folders(folder: str, image_size: int = 64, splits: dict[str, int] | None = None) -> str:
    """`folder/{train,validation,test}/<class>/*.png` (shapes on gradients), written unless already there.

    Written into a temporary sibling and renamed, so an interrupted first run never leaves half a dataset."""
    if os.path.isdir(os.path.join(folder, "train")):
        return folder
    staging = f"{folder}.partial"
    if os.path.isdir(staging):
        import shutil

        shutil.rmtree(staging)
    write_dummy_dataset(staging, splits or QUICKSTART_SPLITS, image_size, "imagefolder", seed=0)
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    os.replace(staging, folder)
    return folder
