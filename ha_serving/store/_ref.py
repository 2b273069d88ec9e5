"""Where the state store is, without its password: what crosses process boundaries.

A Keeper's environment, a serving job's environment and an AppMaster's constructor
arguments are all readable by others (``/proc``, Ray's Job API, Ray's state API), so
what travels there is a ``StoreRef``: the URL with no password in it and the path of
the file that holds the password. Whoever connects reads the file then
(``connect_url``); the password itself never leaves the files and the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ha_serving.util.secrets import masked_url, read_secret, split_password, with_password


@dataclass(frozen=True)
class StoreRef:
    url: str
    """SQLAlchemy URL of the store; carries no password when ``password_file`` is set."""
    password_file: str | None = None
    """File holding the password (mode 0600), read at each connect; None: ``url`` is
    complete as it is (SQLite, a server without a password, or a URL given whole)."""

    @classmethod
    def of(cls, url: str, password_file: Path | str | None) -> StoreRef:
        """The store at ``url``, its password in ``password_file`` when one is given."""
        return cls(url, str(password_file) if password_file is not None else None)

    def connect_url(self) -> str:
        """The URL to connect with: the password read from its file, put in."""
        if self.password_file is None:
            return self.url
        bare, _ = split_password(self.url)
        return with_password(bare, read_secret(self.password_file, what="store password file"))

    @property
    def has_inline_password(self) -> bool:
        """Whether ``url`` itself holds a password (which must then not be passed on)."""
        return split_password(self.url)[1] is not None

    def __str__(self) -> str:
        return masked_url(self.url)
