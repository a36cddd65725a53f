"""The logic of the `run_*.py` scripts, importable and runnable from an installed package
(`python -m rae_hf.scripts.run_rae ...` or the `rae-hf-rae` console command)."""
