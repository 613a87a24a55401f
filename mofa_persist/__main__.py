"""``python -m mofa_persist``: the same as the ``mofa-persist`` command."""

from .cli import main

if __name__ == "__main__":
    main()
