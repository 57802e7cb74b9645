#!/usr/bin/env python3
"""Run the deterministic sync audit drill (the same as ``usr drill sync-audit``).

    uv run python scripts/run_usr_sync_audit_drill.py --report-json /tmp/report.json \
        [--work-dir /tmp/usr-sync-audit-drill]

A thin wrapper kept for the runbooks and the harness: the drill itself lives in
``usr.drills`` and its options, output and exit codes are those of the CLI command.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a plain checkout too (python3 scripts/...), not only inside the project env.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from porcelain.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["drill", "sync-audit", *sys.argv[1:]])
