"""The test project with notebooks included under a deeper prefix."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("deep/under/here/", include("django_notebooks.urls")),
]
