"""``python -m adlab COMMAND [OVERRIDE ...]``: the same as the ``adlab`` console script."""

from adlab.cli.main import main

if __name__ == "__main__":
    main()
