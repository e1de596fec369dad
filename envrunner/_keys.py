"""Keys for workers on other machines: CurveZMQ key pairs and the session key, in one folder.

May import: the standard library, zmq, ``envrunner._runtime.errors``.

Layout of a keys folder (``envrunner keys DIR --client NAME``)::

    DIR/broker.key            the broker's public key: copy it to every worker machine
    DIR/broker.key_secret     the broker's secret key (0600): stays with the caller
    DIR/session.key           the session key that signs every message (0600): copy it to
                              every worker machine, privately
    DIR/clients/NAME.key      a worker's public key: the broker accepts only keys in clients/
    DIR/NAME.key_secret       that worker's secret key (0600): copy it to that machine only

Secret files must be readable by their owner alone; envrunner refuses them otherwise. They are
created that way from their first byte (``open`` with mode 0600 and ``O_EXCL``, in a folder made
0700): no other user can open one in between, whatever the umask.

Refused keys on the caller's side: :func:`start_authenticator` starts the ZAP authenticator that
admits only the keys in ``clients/`` and logs each key it refuses (a worker started with keys of
another folder), so that the caller can say why no worker joined.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ._runtime.errors import EnvrunnerError

__all__ = [
    "RefusedKeys",
    "check_private",
    "create_keys",
    "read_session_key",
    "server_keys",
    "start_authenticator",
]

log = logging.getLogger("envrunner.broker")


def check_private(path: Path) -> None:
    """Refuse a secret file that others can read or that is not ours.

    Raises:
        EnvrunnerError: Missing, or open to others.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise EnvrunnerError(
            f"{path} does not exist: create keys with envrunner keys {path.parent}"
        ) from None
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise EnvrunnerError(
            f"{path} is readable by others (mode {stat.filemode(info.st_mode)}); it holds a "
            f"secret: chmod 600 {path}"
        )


def create_keys(folder: Path, clients: list[str]) -> list[Path]:
    """Create what is missing in a keys folder: broker pair, session key, client pairs.

    Every secret file is created private (0600) from its first byte, in folders created 0700.

    Returns:
        The files created.

    Raises:
        EnvrunnerError: A client name is invalid, or the folder is open to others' writes.
    """
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise EnvrunnerError(f"invalid client name {name!r}: use letters, digits, '-', '_'")
    _private_folder(folder)
    _private_folder(folder / "clients")
    created: list[Path] = []
    if not (folder / "broker.key_secret").exists():
        created += _key_pair(folder, "broker", folder / "broker.key")
    session = folder / "session.key"
    if not session.exists():
        _write_new(session, secrets.token_hex(32) + "\n", 0o600)
        created.append(session)
    for name in clients:
        if not (folder / f"{name}.key_secret").exists():
            created += _key_pair(folder, name, folder / "clients" / f"{name}.key")
    return created


def _private_folder(folder: Path) -> None:
    """Make ``folder`` (0700) if missing; refuse one that other users can write to."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = folder.stat()
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
        raise EnvrunnerError(
            f"refusing to keep keys in {folder}: it is not yours or other users can write there "
            f"(mode {stat.filemode(info.st_mode)}) and could replace them; chmod 700 {folder} "
            "or choose another folder"
        )


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` from its first byte (never an existing file)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        os.fchmod(stream.fileno(), mode)  # the umask only removes bits: this adds none back
        stream.write(text)


def _key_pair(folder: Path, name: str, public_path: Path) -> list[Path]:
    """A CurveZMQ key pair in the files zmq.auth.load_certificate reads: the public key at
    ``public_path`` (0644) and the secret one at ``folder/NAME.key_secret`` (0600)."""
    import zmq

    public, secret = (key.decode("ascii") for key in zmq.curve_keypair())
    banner = f"#   ZeroMQ CURVE {{}} certificate for {name}, made by envrunner keys\n"
    public_text = f'{banner.format("public")}metadata\ncurve\n    public-key = "{public}"\n'
    secret_text = (
        f'{banner.format("**secret**")}metadata\ncurve\n    public-key = "{public}"\n'
        f'    secret-key = "{secret}"\n'
    )
    secret_path = folder / f"{name}.key_secret"
    _write_new(secret_path, secret_text, 0o600)
    public_path.unlink(missing_ok=True)  # a public key without its secret is of no use
    _write_new(public_path, public_text, 0o644)
    return [public_path, secret_path]


def read_session_key(path: Path) -> bytes:
    """The 32-byte session key in a 0600 file."""
    check_private(path)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise EnvrunnerError(f"{path} does not hold a session key (64 hex digits)")
    return key


def server_keys(folder: Path) -> tuple[bytes, bytes]:
    """The broker's (public, secret) key pair from a keys folder."""
    import zmq.auth

    secret_file = folder / "broker.key_secret"
    check_private(secret_file)
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise EnvrunnerError(f"{secret_file} holds no secret key")
    return public, secret


class RefusedKeys:
    """The ZAP credentials check: admits the public keys in ``clients/``, logs each refusal.

    Attributes:
        refused: ``(time.time(), z85 public key)`` of every refused connection, newest last
            (at most ``limit``): what a "no worker joined" error can quote.
    """

    def __init__(self, folder: Path, limit: int = 100) -> None:
        self.folder = folder
        self.limit = limit
        self.refused: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def allowed(self) -> set[bytes]:
        """The z85 public keys in ``clients/`` now (read at each connection: a key added while
        the runner runs is admitted)."""
        import zmq.auth

        keys: set[bytes] = set()
        for path in sorted((self.folder / "clients").glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError):
                continue
            keys.add(public)
        return keys

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed():
            return True
        text = key.decode("ascii", "replace")
        with self._lock:
            self.refused.append((time.time(), text))
            del self.refused[: -self.limit]
            first = text not in self._said
            self._said.add(text)
        if first:  # a refused worker retries every few seconds: say it once per key
            log.warning(
                "refused a worker whose public key %s is not in %s: start it with a client "
                "key made in this keys folder (envrunner keys %s --client NAME, then copy "
                "NAME.key_secret, broker.key and session.key to its machine)",
                text,
                self.folder / "clients",
                self.folder,
            )
        return False

    def summary(self) -> str:
        """One sentence on the refusals so far, for an error message ("" when none)."""
        with self._lock:
            keys = sorted({key for _, key in self.refused})
        if not keys:
            return ""
        return (
            f"{len(keys)} worker key(s) were refused because they are not in "
            f"{self.folder / 'clients'} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            f": the workers use keys of another folder"
        )


def start_authenticator(context: Any, folder: Path) -> tuple[Any, RefusedKeys]:
    """Start the ZAP authenticator of a CurveZMQ listener: only keys in ``folder/clients``.

    Returns:
        The started ``zmq.auth.thread.ThreadAuthenticator`` (stop it with the listener) and the
        :class:`RefusedKeys` that records and logs (logger ``envrunner.broker``, WARNING, once
        per key) every key it refuses.
    """
    from zmq.auth.thread import ThreadAuthenticator

    checker = RefusedKeys(folder)
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=checker)
    return authenticator, checker
