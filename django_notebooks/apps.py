from django.apps import AppConfig


class DjangoNotebooksConfig(AppConfig):
    name = "django_notebooks"
    verbose_name = "Notebooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import autoreload, checks, revocation

        checks.register_checks()
        autoreload.connect_signals()
        revocation.connect_signals()
