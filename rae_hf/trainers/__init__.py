"""Trainers of rae_hf: one `XTrainingArguments` (`x_config.py`) and one `XTrainer` (`x_trainer.py`) per method, all
built on `BaseTrainingArguments` / `BaseTrainer`. Import them from their modules, e.g.
`from rae_hf.trainers.rae_trainer import RAETrainer` (this package imports nothing heavy by itself)."""
