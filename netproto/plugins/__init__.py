"""Service plugins of netproto (see :class:`netproto.services.INetprotoService`).

This package's path takes in every ``netproto/plugins/`` folder on ``sys.path``
that has no ``__init__.py`` of its own, so third-party services are added by
dropping a module there, with no change to netproto.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
