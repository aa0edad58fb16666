"""What the tests need from Django that changed between supported versions."""

from asgiref.sync import sync_to_async


async def force_login(client, user):
    """``AsyncClient.aforce_login`` (Django 5.0+), on Django 4.2 too."""
    if hasattr(client, "aforce_login"):
        await client.aforce_login(user)
    else:
        await sync_to_async(client.force_login)(user)


async def create_user(user_model, username, password):
    """``UserManager.acreate_user`` (Django 5.0+), on Django 4.2 too."""
    return await sync_to_async(user_model.objects.create_user)(
        username, password=password
    )


def session_key(client):
    """The Django session key of a logged-in test client (``asession()`` is
    Django 5.0+)."""
    from django.conf import settings

    return client.cookies[settings.SESSION_COOKIE_NAME].value
