"""A/B of two usr installs on a no-op ``usr diff``: alternated runs over the loopback sshd
(transport openssh and asyncssh) and a local remote, medians printed.

    uv run python benchmarks/prestart_ab.py ROUNDS WORK LOCAL_ROOT REMOTE_BASE LOCAL_REMOTES_TOML \
        DATASET before=/path/to/venv/bin/usr after=/path/to/other/venv/bin/usr

LOCAL_ROOT holds DATASET, already pushed to REMOTE_BASE; LOCAL_REMOTES_TOML names a
``local`` profile ``rem`` for REMOTE_BASE. Used for the early start (usr/sync/prestart.py).
"""

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fixtures import sshd as fx  # noqa: E402

rounds, work, local_root, remote, local_toml, ds = sys.argv[1:7]
clients = dict(arg.split("=", 1) for arg in sys.argv[7:])
work = Path(work)
shutil.rmtree(work, ignore_errors=True)
(work / "sshd").mkdir(parents=True)
proc, info = fx._start(work / "sshd")
try:
    for t in ("openssh", "asyncssh"):
        info.write_remotes(work / f"{t}.toml", Path(remote), name="rem", transport=t)
    cfgs = {
        "openssh": work / "openssh.toml",
        "asyncssh": work / "asyncssh.toml",
        "local": Path(local_toml),
    }
    res: dict = {}
    for kind, cfg in cfgs.items():
        for _ in range(int(rounds)):
            for who, exe in clients.items():
                t0 = time.perf_counter()
                argv = [exe, "--root", local_root, "diff", ds, "rem", "--remotes-config", str(cfg)]
                r = subprocess.run(argv, capture_output=True, text=True)
                dt = time.perf_counter() - t0
                assert r.returncode == 0, r.stderr
                res.setdefault((kind, who), []).append(dt)
    for (kind, who), v in sorted(res.items()):
        med = statistics.median(v)
        print(f"{kind:9s} {who:7s} median {med:.3f} s  min {min(v):.3f}  n={len(v)}")
finally:
    proc.terminate()
