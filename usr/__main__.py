"""``python -m usr``: the same entry point as the ``usr`` console script."""

from porcelain.entry import main

if __name__ == "__main__":
    main()
