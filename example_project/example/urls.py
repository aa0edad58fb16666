from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="home.html"), name="home"),
    # A page of the project with notebooks in it ({% notebook %}).
    path("embed/", TemplateView.as_view(template_name="embed.html"), name="embed"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # The only URL django_notebooks needs; its kernel websockets follow it.
    path("notebooks/", include("django_notebooks.urls")),
]
