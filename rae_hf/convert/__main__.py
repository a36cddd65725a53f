"""`python -m rae_hf.convert <kind> ...`: see `rae_hf.convert`."""

from . import main

main()
