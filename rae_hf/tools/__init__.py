"""Command-line tools: synthetic datasets and dataset conversion."""
