"""An audit log of notebook sessions, from django_notebooks' signals.

A real project would write rows (see docs/topics/signals.md); the demo logs
to the console so that you can watch sessions start and end.
"""

import logging

from django.dispatch import receiver

from django_notebooks.signals import notebook_session_ended, notebook_session_started

logger = logging.getLogger("demo.audit")


@receiver(notebook_session_started)
def session_started(sender, user, notebook, session_id, **kwargs):
    logger.info("%s opened %s (session %s)", user, notebook.slug, session_id)


@receiver(notebook_session_ended)
def session_ended(sender, user, notebook, session_id, duration, **kwargs):
    logger.info(
        "%s closed %s after %.0f s (session %s)",
        user,
        notebook.slug,
        duration.total_seconds(),
        session_id,
    )
