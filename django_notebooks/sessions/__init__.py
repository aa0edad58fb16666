"""Notebook sessions and the messages between server processes about them.

- ``owners``: which browser login opened each marimo session, in this
  process (the bindings every kernel call is checked against).
- ``records``: the ``NotebookSession`` rows every process can read.
- ``relay``: kernel calls and downloads for a session another process holds.
- ``revocation``: closing sessions when their login or access ends.
- ``channel_messages``: every channel-layer message type and group name.
- ``layers``: the channel layer these travel on, and what happens when it fails.
"""
