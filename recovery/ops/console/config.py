"""Whether and how the console may start: credentials, secret key, cookie flags.

The console is off unless a credential is configured: CONSOLE_USERS (hashed passwords) or a
trusted reverse-proxy header (CONSOLE_AUTH_HEADER with CONSOLE_HEADER_ROLES). Checks that need
more than one variable live here, because only the console needs them to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.security import check_password_hash, generate_password_hash

from recovery.config.settings import Settings, SettingsError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
HASH_METHODS = ("scrypt:", "pbkdf2:")
#: Checked for an unknown user name, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("not-a-password", method="scrypt")


class ConsoleConfigError(SettingsError):
    """The console cannot start with these settings; the message names the variable."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def can_act(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True)
class ConsoleConfig:
    host: str
    port: int
    secret_key: str
    secure_cookies: bool
    users: dict[str, tuple[str, str]]  # name -> (role, hash)
    auth_header: str | None
    header_roles: dict[str, str]  # name or "*" -> role

    @classmethod
    def from_settings(cls, settings: Settings, host: str | None = None,
                      port: int | None = None) -> ConsoleConfig:
        """The console's configuration, or ConsoleConfigError saying what to set."""
        users = {name: (role, digest) for name, role, digest in settings.console_users}
        header = settings.console_auth_header
        if not users and header is None:
            raise ConsoleConfigError(
                "The console needs a credential: set CONSOLE_USERS (name:role:hash, hashes from "
                "`recovery-cli console hash-password`) or CONSOLE_AUTH_HEADER behind a proxy.")
        if header is not None and not settings.console_header_roles:
            raise ConsoleConfigError(
                "CONSOLE_AUTH_HEADER is set but CONSOLE_HEADER_ROLES is empty; map the proxy's "
                "user names to roles, e.g. alice:operator,*:viewer.")
        unknown = [name for name, (_, digest) in users.items()
                   if not digest.startswith(HASH_METHODS)]
        if unknown:
            raise ConsoleConfigError(
                f"CONSOLE_USERS has a hash of an unknown kind for {unknown[0]!r}; make it with "
                "`recovery-cli console hash-password` (scrypt or pbkdf2).")
        if settings.console_secret_key is None:
            raise ConsoleConfigError(
                "CONSOLE_SECRET_KEY is required to sign the console's session cookie; generate "
                "one with `openssl rand -hex 32`.")
        bind = host or settings.console_host
        secure = settings.console_secure_cookies
        return cls(host=bind, port=port or settings.console_port,
                   secret_key=settings.console_secret_key,
                   secure_cookies=bind not in LOOPBACK if secure is None else secure,
                   users=users, auth_header=header,
                   header_roles=dict(settings.console_header_roles))

    def check_password(self, name: str, password: str) -> User | None:
        """The user when the password matches its hash; None otherwise (same cost either way)."""
        role, digest = self.users.get(name, ("", _DUMMY_HASH))
        if check_password_hash(digest, password) and role:
            return User(name, role)
        return None

    def header_user(self, name: str) -> User | None:
        """The user a trusted proxy named, with its mapped role; None when it has none."""
        role = self.header_roles.get(name) or self.header_roles.get("*")
        return User(name, role) if name and role else None


def hash_password(password: str) -> str:
    """A CONSOLE_USERS hash (werkzeug's scrypt, salted)."""
    return generate_password_hash(password, method="scrypt")
