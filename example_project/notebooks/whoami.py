import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    request = mo.app_meta().request
    # Outside Django (python whoami.py, marimo edit) there is no Django user.
    mo.stop(request is None, mo.md("Open this notebook through the Django site."))
    return (request,)


@app.cell
def _(mo, request):
    # .get(): under `marimo edit` the user is marimo's, not Django's.
    _user = request.user or {}
    _name = _user.get("display_name") or _user.get("username") or "stranger"
    _groups = ", ".join(f"**{name}**" for name in _user.get("groups", []))
    mo.md(
        f"""
        # Hello, {_name}!

        You are logged in as **{_user.get("username")}**,
        {f"a member of {_groups}" if _groups else "in no group"}.
        {"You are staff." if _user.get("is_staff") else ""}
        """
    )
    return


@app.cell
def _(mo, request):
    # Django's ORM works in cells, plain synchronous code included. Outside
    # the Django server (marimo edit) Django is not set up: skip this cell.
    from django.apps import apps

    mo.stop(not apps.ready or "id" not in (request.user or {}))
    from django.contrib.auth.models import User

    _me = User.objects.get(pk=request.user["id"])
    _groups = ", ".join(_me.groups.order_by("name").values_list("name", flat=True))
    mo.md(
        f"""
        ## From the database

        Read with Django's ORM in this cell: you joined on
        {_me.date_joined:%B %d, %Y}, your groups are {_groups or "none"}, and
        the site has {User.objects.filter(is_active=True).count()} active users.
        """
    )
    return


@app.cell
def _(mo, request):
    mo.vstack(
        [
            mo.md(
                """
                ## `mo.app_meta().request.user`

                Django's `request.user`, turned into a plain dict by
                django_notebooks when the notebook session opened.
                """
            ),
            mo.tree(request.user),
        ]
    )
    return


@app.cell
def _(mo, request):
    mo.vstack(
        [
            mo.md(
                """
                ## `mo.app_meta().request.meta`

                Whatever the project's `REQUEST_META` hook returns
                (`demo/hooks.py` in this project).
                """
            ),
            mo.tree(request.meta),
        ]
    )
    return


@app.cell
def _(mo, request):
    _cookies = ", ".join(f"`{name}`" for name in sorted(request.cookies)) or "none"
    mo.md(
        f"""
        ## What this notebook cannot see

        Django's session and CSRF cookies and any `Authorization` header are
        removed before a request reaches marimo, so notebook code cannot act
        as you elsewhere on the site. Cookies visible here: {_cookies}.
        """
    )
    return


if __name__ == "__main__":
    app.run()
