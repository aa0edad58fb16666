"""Signals sent when a notebook session starts and ends.

A session starts when its kernel websocket opens (the notebook's page has
loaded and its kernel runs) and ends when that websocket closes: the page was
closed or reloaded, the user logged out or lost access, or an administrator
terminated it. A reconnect after a dropped connection starts it again.

Receivers run in a worker thread, so they may use the ORM::

    from django.dispatch import receiver
    from django_notebooks.signals import notebook_session_ended

    @receiver(notebook_session_ended)
    def log_session(sender, user, notebook, session_id, duration, **kwargs):
        AuditEntry.objects.create(user=user, action=f"used {notebook.slug}",
                                  seconds=duration.total_seconds())
"""

from django.dispatch import Signal

#: Sent when a kernel websocket opens. Arguments: ``user`` (the Django user,
#: ``AnonymousUser`` on a public notebook), ``notebook`` (a
#: :class:`~django_notebooks.registry.Notebook`) and ``session_id`` (marimo's).
notebook_session_started = Signal()

#: Sent when that websocket closes. Arguments: those of
#: :data:`notebook_session_started`, and ``duration`` (a
#: ``datetime.timedelta``, how long the websocket was open).
notebook_session_ended = Signal()
