"""``python -m mofa_persist.cli``: the same as the ``mofa-persist`` command."""

from . import main

if __name__ == "__main__":
    main()
