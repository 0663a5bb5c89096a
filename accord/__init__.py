"""accord: a CRDT-based, offline-first sync engine for reservations.

The code lives in three packages: :mod:`accord.engine` (model, sync protocol, storage; no
sockets), :mod:`accord.relay` (the websocket server) and :mod:`accord.terminal` (the
offline-first client). :mod:`accord.cli` dispatches the ``accord`` command.
"""

__version__ = "0.1.0"
