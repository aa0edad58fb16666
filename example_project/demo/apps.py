from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The example's own code: the demo command, templates, the
    ``REQUEST_META`` hook and an audit log of notebook sessions."""

    name = "demo"

    def ready(self):
        from . import audit  # noqa: F401  (connects the signal receivers)
