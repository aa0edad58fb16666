"""Django's ORM in cells: synchronous and async queries, a transaction, and
what the kernel sees of DJANGO_ALLOW_ASYNC_UNSAFE. Each cell prints one
ORM-<WHAT> line as its output; tests/e2e/test_orm.py reads them."""

import marimo

app = marimo.App()


@app.cell
def _():
    import json
    import os

    import marimo as mo
    from django.contrib.auth.models import User

    def show(what, value):
        return mo.md(f"ORM-{what} " + json.dumps(value, sort_keys=True, default=str))

    return User, json, mo, os, show


@app.cell
def _(User, show):
    # The natural synchronous ORM, in a cell without await.
    names = list(User.objects.order_by("username").values_list("username", flat=True))
    show("SYNC", {"count": User.objects.filter(is_active=True).count(), "names": names})
    return


@app.cell
def _(User, mo, show):
    # The current user's groups, looked up from the user dict's id.
    me = User.objects.get(pk=mo.app_meta().request.user["id"])
    show("GROUPS", sorted(me.groups.values_list("name", flat=True)))
    return


@app.cell
def _(User):
    # A queryset and a model instance as outputs: shown as repr() shows them.
    User.objects.filter(username="alice")
    return


@app.cell
def _(User):
    User.objects.get(username="bob")
    return


@app.cell
async def _(User, show):
    # The async ORM, with top-level await.
    count = await User.objects.acount()
    first = await User.objects.order_by("username").afirst()
    show("ASYNC", {"count": count, "first": first.username})
    return


@app.cell
def _(User, show):
    from django.contrib.auth.models import Group
    from django.db import transaction

    # Written and rolled back inside one cell: nothing is left behind.
    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            Group.objects.create(name="orm-notebook-temporary")
            inside = Group.objects.filter(name="orm-notebook-temporary").count()
            raise Rollback
    except Rollback:
        pass
    after = Group.objects.filter(name="orm-notebook-temporary").count()
    show(
        "TRANSACTION", {"inside": inside, "after": after, "users": User.objects.count()}
    )
    return


@app.cell
def _(os, show):
    show(
        "ENV",
        {"DJANGO_ALLOW_ASYNC_UNSAFE": os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")},
    )
    return


if __name__ == "__main__":
    app.run()
