"""Convert ImageFolder directories (e.g. ImageNet) into a self-contained Hugging Face ``DatasetDict``.

Usage::

    python -m rae_hf.tools.imagefolder_to_hf --train_dir D [--validation_dir D] --output_dir O \
        [--push_to_hub REPO] [--num_proc N] [--cache_dir C]

Class sub-folder names become a ``label`` ClassLabel column. Image bytes are embedded, so the result
no longer depends on the source folders; undecodable files are kept and skipped later at training time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import datasets

from rae_hf.data.datasets import imagefolder_data_files

__all__ = ["imagefolder_to_dataset"]


def imagefolder_to_dataset(
    train_dir: str, validation_dir: str | None = None, cache_dir: str | None = None, num_proc: int | None = None
) -> datasets.DatasetDict:
    """Read the train (and validation) folders with the ``imagefolder`` builder."""
    split_dirs = {"train": train_dir}
    if validation_dir is not None:
        split_dirs["validation"] = validation_dir
    return datasets.load_dataset(
        "imagefolder", data_files=imagefolder_data_files(split_dirs), cache_dir=cache_dir, num_proc=num_proc
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_dir", required=True, help="Training images, one sub-folder per class.")
    parser.add_argument("--validation_dir", help="Validation images, same class sub-folders.")
    parser.add_argument("--output_dir", help="Where to save_to_disk the DatasetDict.")
    parser.add_argument("--push_to_hub", metavar="REPO", help="Hub dataset repo id to push the DatasetDict to.")
    parser.add_argument("--private", action="store_true", help="Create the hub repo as private.")
    parser.add_argument("--num_proc", type=int, help="Worker processes for reading and saving.")
    parser.add_argument("--cache_dir", help="datasets cache folder for the intermediate Arrow files.")
    args = parser.parse_args(argv)
    if args.output_dir is None and args.push_to_hub is None:
        parser.error("give --output_dir and/or --push_to_hub")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m rae_hf.tools.imagefolder_to_hf``."""
    args = _parse_args(argv)
    dataset = imagefolder_to_dataset(args.train_dir, args.validation_dir, args.cache_dir, args.num_proc)
    print(dataset)
    if args.output_dir is not None:
        dataset.save_to_disk(args.output_dir, num_proc=args.num_proc)
        print(f"Saved to {args.output_dir}")
    if args.push_to_hub is not None:
        dataset.push_to_hub(args.push_to_hub, private=args.private, num_proc=args.num_proc)
        print(f"Pushed to {args.push_to_hub}")


if __name__ == "__main__":
    main()
