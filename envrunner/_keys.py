"""Keys for workers on other machines: CurveZMQ key pairs and the session key, in one folder.

May import: the standard library, zmq.

Layout of a keys folder (``envrunner keys DIR --client NAME``)::

    DIR/broker.key            the broker's public key: copy it to every worker machine
    DIR/broker.key_secret     the broker's secret key (0600): stays with the caller
    DIR/session.key           the session key that signs every message (0600): copy it to
                              every worker machine, privately
    DIR/clients/NAME.key      a worker's public key: the broker accepts only keys in clients/
    DIR/NAME.key_secret       that worker's secret key (0600): copy it to that machine only

Secret files must be readable by their owner alone; envrunner refuses them otherwise.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from ._runtime.errors import EnvrunnerError

__all__ = ["check_private", "create_keys", "read_session_key", "server_keys"]


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

    Returns:
        The files created.
    """
    import zmq.auth

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clients").mkdir(exist_ok=True)
    created: list[Path] = []
    if not (folder / "broker.key_secret").exists():
        public, secret = zmq.auth.create_certificates(str(folder), "broker")
        os.chmod(secret, 0o600)
        created += [Path(public), Path(secret)]
    session = folder / "session.key"
    if not session.exists():
        descriptor = os.open(session, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_hex(32) + "\n")
        created.append(session)
    for name in clients:
        if not name or "/" in name or name.startswith("."):
            raise EnvrunnerError(f"invalid client name {name!r}: use letters, digits, '-', '_'")
        if (folder / f"{name}.key_secret").exists():
            continue
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        authorized = folder / "clients" / f"{name}.key"
        os.replace(public, authorized)
        created += [authorized, Path(secret)]
    return created


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
