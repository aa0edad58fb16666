"""Include in the project's urls.py, under any prefix::

    path("notebooks/", include("django_notebooks.urls")),

The kernel websocket finds notebooks through these same patterns, so the
prefix is configured here and nowhere else.
"""

from django.urls import path, re_path

from django_notebooks import views
from django_notebooks.marimo import frontend

app_name = "django_notebooks"

urlpatterns = [
    path("", views.index, name="index"),
    # marimo's frontend files (no notebook slug starts with "_").
    re_path(
        r"^_marimo/(?P<version>[^/]+)/(?P<path>.*)$",
        frontend.frontend_file,
        name="frontend",
    ),
    # A notebook's page: reverse("django_notebooks:notebook", args=["sales"])
    # or args=["lab/demo"] for a notebook in a directory.
    re_path(r"^(?P<slug>[^/]+(?:/[^/]+)?)/$", views.notebook, name="notebook"),
    # Everything below a page (and a page without its slash, redirected).
    re_path(r"^(?P<location>.+)$", views.notebook_location, name="notebook_location"),
]
