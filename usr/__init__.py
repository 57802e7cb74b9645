"""usr: git-like sync of sequence datasets between an HPC cluster and a laptop.

The core library. Nothing here imports click: the CLI (``porcelain`` and ``plumbing``)
is a thin layer over these modules, and batch writers call them directly.
"""

__version__ = "0.1.0"

#: Version of every ``{"usr_output_version": N, "data": ...}`` document usr prints or writes.
OUTPUT_VERSION = 1
