"""How far a dataset and its remotes are apart: ``usr status DS [REMOTE]`` and
``usr log DS --remote REMOTE``.

Owns :func:`remote_status`, :func:`last_seen_status` (no network: the remote-tracking
refs), :func:`remote_log` and :func:`status_text`. May import :mod:`usr.sync.history`,
:mod:`usr.sync.remote`, :mod:`usr.sync.target`.
"""

from __future__ import annotations

import re
from typing import Any

from usr.errors import NotFoundError, UsageError
from usr.sync.history import commits, haves, relation, set_tracking, short, tracking_ref
from usr.sync.options import SyncOptions
from usr.sync.remote import open_remote
from usr.sync.target import Target, local_exists, open_store


def upstream(target: Target) -> str:
    """The remote a sync command means when it names none (git's upstream): the one remote
    this dataset has synced with, by its remote-tracking refs. Several, or none, must be
    named."""
    seen = []
    if target.kind == "dataset" and local_exists(target.path):
        seen = [e["remote"] for e in last_seen_status(open_store(target.path, create=True))]
    if len(seen) == 1:
        return seen[0]
    if seen:
        raise UsageError(
            f"{target.dataset} has synced with {len(seen)} remotes: {', '.join(seen)}",
            "name the one you mean: usr pull|push|diff DATASET REMOTE",
        )
    raise UsageError(
        f"no remote named, and {target.dataset} has not synced with one yet",
        "name it: usr pull|push|diff DATASET REMOTE (usr remotes list)",
    )


def remote_log(store: Any, remote: str, limit: int | None = None) -> list[Any]:
    """The remote-tracking history (``usr log DS --remote REMOTE``), newest first.

    Reads only the local store: what the last diff/pull/push saw. NotFoundError when this
    dataset was never compared with ``remote``.
    """
    head = store.head(tracking_ref(remote))
    if head is None:
        raise NotFoundError(
            f"no remote-tracking state for {remote}",
            f"run usr diff DATASET {remote} first: it records what the remote has",
        )
    return store.log(head, limit=limit)


def _apart(store: Any, remote: str, local: str | None, seen: str | None) -> dict[str, Any]:
    rel, base = relation(store, local, seen)
    return {
        "remote": remote,
        "local_head": local,
        "remote_head": seen,
        "merge_base": base,
        "relation": rel,
        "ahead": len(commits(store, local, seen)),
        "behind": len(commits(store, seen, local)),
    }


def last_seen_status(store: Any) -> list[dict[str, Any]]:
    """How far local is from every remote this dataset synced with, as last seen (no
    network): one entry per ``refs/remotes/*/main``."""
    local = store.head()
    out = []
    for name in sorted(store.refs.names()):
        m = re.fullmatch(r"refs/remotes/([^/]+)/main", name)
        if m:
            entry = _apart(store, m.group(1), local, store.head(name))
            entry["live"] = False
            out.append(entry)
    return out


def remote_status(
    target: Target,
    remote: str | None = None,
    options: SyncOptions | None = None,
) -> list[dict[str, Any]]:
    """How far local and the remotes are apart (``usr status DS [REMOTE]``).

    Without ``remote``: :func:`last_seen_status`. With ``remote``: asks it now (its head,
    then its history's commits and trees, no file contents), moves the tracking ref like
    ``git fetch``, and reports that one live. ``ahead`` counts local states the remote
    lacks, ``behind`` remote states local lacks.
    """
    options = options or SyncOptions()
    if not local_exists(target.path):
        raise NotFoundError(f"dataset {target.dataset!r} does not exist at {target.path}")
    store = open_store(target.path, create=True)
    if remote is None:
        return last_seen_status(store)
    local = store.head()
    with open_remote(remote, options) as session:
        seen = session.heads(target.dataset)["head"]
        if seen is not None:
            session.fetch(target.dataset, store, [seen], haves(local), blobs=False)
            set_tracking(store, remote, seen)
    entry = _apart(store, remote, local, seen)
    entry["live"] = True
    return [entry]


def status_text(entries: list[dict[str, Any]]) -> list[str]:
    """One line per remote for ``usr status``."""
    lines = []
    for e in entries:
        how = "now" if e.get("live") else "last seen"
        rel = e["relation"]
        if rel == "equal":
            what = "up-to-date"
        elif rel == "remote-missing":
            what = "the dataset is not on the remote"
        else:
            what = f"{rel}: local ahead by {e['ahead']}, behind by {e['behind']}"
        lines.append(f"{e['remote']} ({how} {short(e['remote_head'])}): {what}")
    return lines
