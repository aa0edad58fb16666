# Added at the end of mysite/settings.py, where BASE_DIR is defined.
# ruff: noqa: F821
ASGI_APPLICATION = "mysite.asgi.application"

# Lets logging out close the notebooks a user has open.
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
}

LOGIN_REDIRECT_URL = "/notebooks/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

DJANGO_NOTEBOOKS = {
    "NOTEBOOKS": {
        "hello": BASE_DIR / "notebooks" / "hello.py",
    },
}
