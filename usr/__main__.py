"""``python -m usr``: the same entry point as the ``usr`` console script."""

from porcelain.entry import run

if __name__ == "__main__":
    run()
