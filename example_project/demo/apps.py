from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The example's own code: the demo command, templates and the
    ``REQUEST_META`` hook."""

    name = "demo"
