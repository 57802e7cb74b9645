"""One error type per failure class, each carrying its exit code.

The CLI maps these to ``usr: error: <what> (<hint>)`` on stderr and the exit code, in one
place (``porcelain.cli``). Library code raises them; it never prints or exits.

This module imports nothing of usr's, so every other module may import it. It also owns
:func:`redact_text`, because every error message passes through it on its way to a user
(:mod:`usr.events` and the audit apply the same function to what they write).

Exit codes (documented in docs/cli.md):

====  ======================  ==================================================
code  class                   meaning
====  ======================  ==================================================
0                             success
1     UsrError                unexpected failure of usr itself
2     UsageError              bad command line, refused flag combination, no -y
3     InputError              bad input: malformed file, bad id, schema violation
4     NotFoundError           unknown dataset, namespace, remote, revision
5     VerifyError             verification or integrity failure (hash mismatch)
6     TransportError          connection, protocol or remote command failure
7     AuthError               host key or authentication failure
8     ConflictError           diverged histories, remote moved, merge conflict
9     LockTimeout             a dataset lock could not be taken in time
10    HookRefused             a hook refused the operation
====  ======================  ==================================================
"""

from __future__ import annotations

import re

#: What a redacted secret reads as, everywhere usr echoes text.
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^/:@\s]+):[^@/\s]+@", re.IGNORECASE)
#: ``NAME=value`` in free text (a query string, an env assignment) where NAME looks secret.
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>[\w.-]*(pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|"
    r"access[_-]?key|private[_-]?key)[\w.-]*)=[^\s&;'\"]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with URL passwords and secret-looking ``NAME=value`` values replaced by
    ``***``: for anything usr echoes (events, error lines, audit JSON)."""
    text = _URL_PASSWORD.sub(rf"\g<scheme>:{REDACTED}@", text)
    return _SECRET_ASSIGNMENT.sub(rf"\g<name>={REDACTED}", text)


class UsrError(Exception):
    """Base of every error usr reports to a user. ``hint`` says what to do about it."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        # Errors echo input (ids, remote names, paths); a pasted URL password or token must
        # not reach the terminal, an audit file or a peer.
        message = redact_text(message)
        hint = redact_text(hint) if hint else hint
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
        }


class UsageError(UsrError):
    exit_code = 2
    kind = "usage"


class InputError(UsrError):
    exit_code = 3
    kind = "input"


class NotFoundError(UsrError):
    exit_code = 4
    kind = "not-found"


class VerifyError(UsrError):
    exit_code = 5
    kind = "verify"


#: The hint of every store-damage error.
FSCK_HINT = "the dataset's store is damaged: usr fsck DATASET names every problem"


class StoreDamage(VerifyError):
    """The object store lacks, or cannot read, an object that it names (exit 5)."""

    def __init__(self, message: str, hint: str | None = FSCK_HINT) -> None:
        super().__init__(message, hint)


_OBJECT_ID = re.compile(r"[0-9a-f]{40}\Z")


def store_damage(exc: BaseException) -> StoreDamage | None:
    """The :class:`StoreDamage` a low-level failure stands for, or None.

    libgit2 raises its own errors (``GitError``, its ``NotFoundError``) for an object it
    cannot find or read, and pygit2 a ``KeyError`` naming the id of an object the store
    lacks; only a damaged store makes either reach a command. Matched by where the
    exception comes from, so this module needs no pygit2.
    """
    if isinstance(exc, UsrError):
        return None
    if type(exc).__module__ in ("_pygit2", "pygit2", "pygit2.errors"):
        text = " ".join(str(exc).split()) or type(exc).__name__
        return StoreDamage(f"cannot read the object store: {text}")
    if isinstance(exc, KeyError) and exc.args and _OBJECT_ID.match(str(exc.args[0])):
        return StoreDamage(f"object {exc.args[0]} is missing from the object store")
    return None


class TransportError(UsrError):
    exit_code = 6
    kind = "transport"


class AuthError(TransportError):
    exit_code = 7
    kind = "auth"


class ConflictError(UsrError):
    exit_code = 8
    kind = "conflict"


class LockTimeout(UsrError):
    exit_code = 9
    kind = "lock-timeout"


class HookRefused(UsrError):
    exit_code = 10
    kind = "hook-refused"


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        UsrError,
        UsageError,
        InputError,
        NotFoundError,
        VerifyError,
        TransportError,
        AuthError,
        ConflictError,
        LockTimeout,
        HookRefused,
    )
}
