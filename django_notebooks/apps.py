from django.apps import AppConfig


class DjangoNotebooksConfig(AppConfig):
    name = "django_notebooks"
    verbose_name = "Notebooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_notebooks import checks
        from django_notebooks.marimo import autoreload
        from django_notebooks.sessions import revocation
        from django_notebooks.snapshots import keeper

        checks.register_checks()
        autoreload.connect_signals()
        revocation.connect_signals()
        keeper.connect_signals()
