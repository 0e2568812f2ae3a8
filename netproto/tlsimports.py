"""pyOpenSSL kept out of a process that has no use for it.

Importing Twisted's TCP support imports pyOpenSSL, and with it ``cryptography``,
whether or not anything uses TLS: ``twisted.internet.tcp`` imports
``twisted.protocols.tls`` for ``startTLS``, and ``posixbase`` and ``endpoints``
do the same for ``listenSSL`` and ``ssl:`` endpoints. Here that is 13 MiB of
RSS and 0.1 s of start-up in every ``twistd netproto`` and every ``netproto``
client, a fifth of an idle server. Twisted is written to do without it: when
the import fails, its transports have no ``startTLS``, its reactor does not
provide ``IReactorSSL``, and ``ssl:`` endpoints are refused.

:func:`keepOpenSSLOut` makes that import fail in this process, with a message
that says why, when it is called before ``twisted.internet.tcp`` is imported.
Its two callers decide from what they were asked to do:

* ``twistd netproto`` (:mod:`netproto.tap`), when no option asks for TLS and no
  served service declares that it may use pyOpenSSL (see
  :attr:`netproto.services.INetprotoService.usesOpenSSL`);
* the ``netproto`` client (:mod:`netproto.client.cli`), when its connection is
  not TLS (see :func:`netproto.client.connection.usesTLS`).

This is the one place netproto changes which of Twisted's paths is taken at
import; ``tests/test_tlsimports.py`` holds both callers to it. Set
``NETPROTO_KEEP_OPENSSL=1`` to keep pyOpenSSL in any case (a service plugin
that uses TLS without saying so).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from typing import Final

#: Endpoint types that never use pyOpenSSL: anything else (``ssl:``, an
#: endpoint plugin) may.
PLAIN_ENDPOINT_TYPES: Final = frozenset({"tcp", "tcp6", "unix", "systemd", "udp"})

#: The environment variable that turns this off.
KEEP_VARIABLE: Final = "NETPROTO_KEEP_OPENSSL"

REASON: Final = (
    "pyOpenSSL is kept out of this netproto process: nothing it was asked to do "
    f"uses TLS (set {KEEP_VARIABLE}=1 to keep it in; see netproto.tlsimports)"
)


class _RefuseOpenSSL(importlib.abc.MetaPathFinder):
    """Fails every import of ``OpenSSL`` with :data:`REASON`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "OpenSSL" or fullname.startswith("OpenSSL."):
            raise ImportError(REASON, name=fullname)
        return None


def plainEndpoint(description: str) -> bool:
    """Whether a server or client endpoint description is of a type that never uses TLS."""
    return description.split(":", 1)[0].strip().lower() in PLAIN_ENDPOINT_TYPES


def keepOpenSSLOut() -> bool:
    """Make every later import of pyOpenSSL fail, if it is not too late.

    :return: whether it is now kept out; False when Twisted's TCP support or
        pyOpenSSL is imported already (a test run, a process that used TLS),
        or when :data:`KEEP_VARIABLE` is set.
    """
    if any(isinstance(finder, _RefuseOpenSSL) for finder in sys.meta_path):
        return True
    if os.environ.get(KEEP_VARIABLE) or {"OpenSSL", "twisted.internet.tcp"} & sys.modules.keys():
        return False
    sys.meta_path.insert(0, _RefuseOpenSSL())
    return True
