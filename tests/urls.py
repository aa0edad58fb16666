from pathlib import Path

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.generic import TemplateView
from django.views.static import serve

import django_notebooks
from tests.views import PageOfSize

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("notebooks/", include("django_notebooks.urls")),
    # A page of the project that embeds notebooks ({% notebook %}), and the
    # app's static files it links (the test project has no staticfiles).
    path("embed/", TemplateView.as_view(template_name="embed_page.html")),
    # One that embeds a static notebook (tests/e2e/test_snapshots.py).
    path(
        "embed-snapshot/",
        TemplateView.as_view(template_name="snapshot_embed_page.html"),
    ),
    # An ordinary Django page of a given size (bench/snapshots.py compares a
    # static notebook's page with it).
    path("bench/page-of-size/<int:size>/", PageOfSize.as_view()),
    re_path(
        r"^static/(?P<path>.*)$",
        serve,
        {"document_root": Path(django_notebooks.__file__).parent / "static"},
    ),
]
