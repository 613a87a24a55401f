"""The store API, one module per aggregate, combined by :class:`mofa_persist.store.Store`.

``core`` holds what they share (the backend, the view, the runner, input checks); ``sessions``,
``history`` (messages and turns), ``state``, ``usage`` (provider calls) and ``lifecycle``
(retention and erasure) each add their methods. ``store.py`` stays the public facade:
connecting, views and the MoFA store classes.
"""
