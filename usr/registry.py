"""The namespace registry (``<root>/registry.toml``): who may write which overlay columns.

An overlay namespace is a contract: its columns and their Arrow types. Overlay parts are
stamped with the hash of the registry and of their namespace's contract when written, so a
later reader (or ``validate --strict``) can tell a part written under a contract that has
since changed. Written with tomli-w, atomically, under a lock on the root.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import blake3
import pyarrow as pa
import tomli_w

from usr.atomic import write_bytes
from usr.errors import InputError, NotFoundError
from usr.layout import REGISTRY_FILE, validate_namespace
from usr.locks import hold

_PRIMITIVES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "str": pa.string(),
    "utf8": pa.string(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "date32": pa.date32(),
    "binary": pa.binary(),
    "timestamp[us, UTC]": pa.timestamp("us", tz="UTC"),
}
_FIELD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*\Z")


def parse_type(text: str) -> pa.DataType:
    """Parse a registry type: a primitive (``float64``) or ``list<T>``, nested."""
    t = text.strip()
    if t.startswith("list<") and t.endswith(">"):
        return pa.list_(parse_type(t[5:-1]))
    if t in _PRIMITIVES:
        return _PRIMITIVES[t]
    raise InputError(
        f"unknown column type {text!r}",
        "use string, bool, int8..int64, uint8..uint64, float32, float64, date32, binary, "
        "timestamp[us, UTC] or list<T>",
    )


def type_name(dtype: pa.DataType) -> str:
    """The canonical registry spelling of an Arrow type (inverse of :func:`parse_type`)."""
    if pa.types.is_list(dtype):
        return f"list<{type_name(dtype.value_type)}>"
    for name in _CANONICAL:
        if _PRIMITIVES[name] == dtype:
            return name
    raise InputError(f"type {dtype} has no registry spelling")


_CANONICAL = [
    "string",
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "date32",
    "binary",
] + ["timestamp[us, UTC]"]


def parse_columns(namespace: str, spec: str) -> list[tuple[str, str]]:
    """Parse ``'ns__a:float64,ns__v:list<float64>'`` into ``[(name, type), ...]``.

    Names may be written bare (``a``) and are qualified as ``<namespace>__a``.
    """
    columns: list[tuple[str, str]] = []
    depth, start = 0, 0
    pieces: list[str] = []
    for i, ch in enumerate(spec):
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            pieces.append(spec[start:i])
            start = i + 1
    pieces.append(spec[start:])
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if ":" not in piece:
            raise InputError(f"column {piece!r} has no type", "write NAME:TYPE, e.g. a:float64")
        name, _, typ = piece.partition(":")
        name = qualify(namespace, name.strip())
        columns.append((name, type_name(parse_type(typ))))
    if not columns:
        raise InputError("no columns given", "use --columns 'ns__a:float64,...'")
    names = [c[0] for c in columns]
    if len(set(names)) != len(names):
        raise InputError(f"column names repeat in {spec!r}")
    return columns


def qualify(namespace: str, name: str) -> str:
    """``a`` -> ``ns__a``; ``ns__a`` stays; a column of another namespace is refused."""
    field_name = name
    if "__" in name:
        prefix, _, field_name = name.partition("__")
        if prefix != namespace:
            raise InputError(
                f"column {name!r} is not in namespace {namespace!r}",
                f"overlay columns are named {namespace}__<field>",
            )
    if not _FIELD_RE.match(field_name):
        raise InputError(f"bad column name {name!r}: field must match [A-Za-z0-9][A-Za-z0-9_]*")
    return f"{namespace}__{field_name}"


@dataclass(frozen=True)
class Namespace:
    name: str
    columns: tuple[tuple[str, str], ...]
    owner: str = ""
    description: str = ""
    created_at: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def arrow_types(self) -> dict[str, pa.DataType]:
        return {name: parse_type(typ) for name, typ in self.columns}

    def contract_hash(self) -> str:
        """blake3 of the canonical JSON of the contract (name and typed columns only)."""
        doc = {"namespace": self.name, "columns": [list(c) for c in self.columns]}
        return blake3.blake3(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "namespace": self.name,
            "owner": self.owner,
            "description": self.description,
            "created_at": self.created_at,
            "columns": [{"name": n, "type": t} for n, t in self.columns],
            "contract_hash": self.contract_hash(),
        }


class Registry:
    """The parsed ``registry.toml`` of one datasets root."""

    def __init__(self, root: Path, namespaces: dict[str, Namespace], raw: bytes) -> None:
        self.root = root
        self.namespaces = namespaces
        self.raw = raw

    @property
    def path(self) -> Path:
        return self.root / REGISTRY_FILE

    @classmethod
    def load(cls, root: Path) -> Registry:
        path = root / REGISTRY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(root, {}, b"")
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot parse {path}: {exc}", "fix or restore registry.toml") from exc
        namespaces: dict[str, Namespace] = {}
        for name, body in (doc.get("namespaces") or {}).items():
            try:
                cols = tuple((c["name"], c["type"]) for c in body.get("columns", []))
            except (KeyError, TypeError) as exc:
                raise InputError(f"{path}: namespace {name!r} has a malformed column") from exc
            namespaces[name] = Namespace(
                name=name,
                columns=cols,
                owner=body.get("owner", ""),
                description=body.get("description", ""),
                created_at=body.get("created_at", ""),
            )
        return cls(root, namespaces, raw)

    def hash(self) -> str:
        """blake3 of the registry file bytes ('' bytes when there is none)."""
        return blake3.blake3(self.raw).hexdigest()

    def get(self, name: str) -> Namespace:
        validate_namespace(name)
        ns = self.namespaces.get(name)
        if ns is None:
            raise NotFoundError(
                f"namespace {name!r} is not registered in {self.path}",
                f"run: usr namespace register {name} --columns '{name}__field:type'",
            )
        return ns

    def to_toml(self) -> bytes:
        doc = {
            "namespaces": {
                ns.name: {
                    "owner": ns.owner,
                    "description": ns.description,
                    "created_at": ns.created_at,
                    "columns": [{"name": n, "type": t} for n, t in ns.columns],
                }
                for ns in sorted(self.namespaces.values(), key=lambda n: n.name)
            }
        }
        return tomli_w.dumps(doc).encode("utf-8")


def register(
    root: Path,
    name: str,
    columns: list[tuple[str, str]],
    owner: str = "",
    description: str = "",
) -> tuple[Namespace, bool]:
    """Register ``name`` with ``columns``; returns (namespace, created).

    Registering the same contract again is a no-op; a different contract for an existing
    namespace is refused, because parts already stamped with the old contract would silently
    change meaning.
    """
    validate_namespace(name)
    wanted = tuple(columns)
    root.mkdir(parents=True, exist_ok=True)
    with hold(root / ".usr.lock", what="namespace register"):
        reg = Registry.load(root)
        existing = reg.namespaces.get(name)
        if existing is not None:
            if existing.columns == wanted:
                return existing, False
            raise InputError(
                f"namespace {name!r} is already registered with other columns",
                "register a new namespace, or keep the registered columns",
            )
        ns = Namespace(
            name=name,
            columns=wanted,
            owner=owner,
            description=description,
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        reg.namespaces[name] = ns
        write_bytes(reg.path, reg.to_toml())
        return ns, True
