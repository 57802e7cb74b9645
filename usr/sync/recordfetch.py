"""The record diff of a sync plan (``usr diff --rows``): what it reads of the remote side
is fetched into the local store first, then both working trees are diffed record by record.

Owns :func:`fetch_record_blobs` (the remote tree's ``records.parquet`` and overlay parts,
only the objects and chunks missing here; cached in the store like fetched trees, no
working file changes) and :func:`record_diff` (the ``data.records`` document, old = local,
new = remote as in ``files[]``; with a merge base also each side against it, which says
which side added the records or set the values). May import :mod:`usr.errors` and
:mod:`usr.record_diff` (which brings pyarrow, loaded only when ``--rows`` is asked for).
"""

from __future__ import annotations

from typing import Any

from usr.errors import InputError


def fetch_record_blobs(session: Any, store: Any, dataset: str, tree: str | None) -> None:
    """Bring the blobs a record diff reads from the remote tree ``tree`` (its trees are
    here already): records.parquet and every overlay part, with their missing chunks."""
    from usr.record_diff import needed_blobs

    missing = [oid for oid in needed_blobs(store, tree) if not store.has_object(oid)]
    if missing:
        session.fetch_blobs(dataset, store, missing)


def record_diff(store: Any, st: Any, options: Any) -> dict[str, Any]:
    """The record diff from the local working tree to the remote one (``data.records``).

    Two heads without a common state are two different datasets under one id: refused,
    like a state without a usable records.parquet (InputError, exit 3)."""
    from usr.record_diff import diff_states

    local_head, remote_head = st.local_head, st.remote_head
    if local_head and remote_head and store.merge_base(local_head, remote_head) is None:
        raise InputError(
            "local and remote are two different datasets (no common history): "
            "a record diff of them says nothing",
            "check the dataset id and the remote's base_dir",
        )
    doc = diff_states(
        store, st.local_tree, st.remote_tree, options.max_ids, labels=("local", "remote")
    ).to_json()
    base = store.merge_base(local_head, remote_head) if local_head and remote_head else None
    if base is not None:  # who did what: each side against the state both last shared
        sides: dict[str, Any] = {"merge_base": base}
        for side, tree in (("local", st.local_tree), ("remote", st.remote_tree)):
            found = diff_states(store, base, tree, options.max_ids, labels=("merge base", side))
            sides[side] = found.to_json()
        doc["since_merge_base"] = sides
    return doc
