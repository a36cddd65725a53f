"""`python -m rae_hf.convert <kind> ...`: see `rae_hf.convert`."""

from . import main

if __name__ == "__main__":
    main()
