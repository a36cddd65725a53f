"""rae_hf: HuggingFace-native training of Representation Autoencoders and vision models."""

from setuptools import find_packages, setup

# transformers: from the first release with every API rae_hf uses (5.20.0: `SubConfigSpec`; the non-public Trainer
# hooks date from 5.3.0 and are checked at import by rae_hf/trainers/trainer_contract.py, which holds the same range)
# to before the next minor that has not been tested.
TRANSFORMERS = "transformers>=5.20.0,<5.26.0"

INSTALL_REQUIRES = [
    "torch>=2.4",
    "torchvision>=0.19",
    TRANSFORMERS,
    "accelerate>=1.0",
    "datasets>=3.0",
    "evaluate>=0.4",
    "diffusers>=0.36",
    "peft>=0.13",
    "torchmetrics>=1.4",
    "torch-fidelity>=0.4",
    "wandb>=0.18",
    "lpips>=0.1.4",
    "safetensors>=0.4",
    "pyyaml>=6.0",
    "tqdm",
    "tensorboard",
]
EXTRAS = {"dev": ["pytest>=8", "pytest-xdist>=3", "ruff>=0.6", "scikit-learn"]}
# Every script is also a console command of the installed package (no clone needed).
CONSOLE_SCRIPTS = [
    "rae-hf-rae = rae_hf.scripts.run_rae:main",
    "rae-hf-probe = rae_hf.scripts.run_probe:main",
    "rae-hf-jit = rae_hf.scripts.run_jit:main",
    "rae-hf-dino-pretrain = rae_hf.scripts.run_dino_pretrain:main",
    "rae-hf-prune = rae_hf.scripts.run_prune:main",
    "rae-hf-rae-dit = rae_hf.scripts.run_rae_dit:main",
    "rae-hf-convert = rae_hf.convert:main",
]

# The recipes and accelerate configs stay at the repository root (the documented commands use those paths) and ship
# inside the package as rae_hf/recipes/<method>/*.yaml and rae_hf/accelerate_configs/*.yaml (every folder, found by
# the globs), so `rae-hf-rae --recipe quickstart` runs from a plain `pip install`.
DATA_FOLDERS = {"rae_hf.recipes": "recipes", "rae_hf.accelerate_configs": "accelerate_configs"}

setup(
    name="rae_hf",
    version="0.1.0",
    description="HuggingFace-native training of Representation Autoencoders (RAE) and vision models",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rae_hf", "rae_hf.*"]) + list(DATA_FOLDERS),
    package_dir=DATA_FOLDERS,
    package_data={package: ["*.yaml", "**/*.yaml", "*.md", "**/*.md"] for package in DATA_FOLDERS},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
