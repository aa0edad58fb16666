import marimo

__generated_with = "0.25.2"
app = marimo.App()


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    # Served static (see the settings): this page is a snapshot, made in the
    # background and shown to every visitor alike. So it shows figures only,
    # nothing about one person, and never asks who is looking: a notebook
    # that did (mo.app_meta()) could not have a snapshot without an as_user.
    # Django's ORM works as in a view. Outside the Django server (marimo
    # edit) Django is not set up: say so and stop.
    from django.apps import apps

    mo.stop(not apps.ready, mo.md("Open this notebook through the Django site."))
    from django.contrib.auth.models import Group, User
    from django.db.models import Count

    people = {
        "users": User.objects.count(),
        "active": User.objects.filter(is_active=True).count(),
        "staff": User.objects.filter(is_staff=True).count(),
    }
    groups = list(
        Group.objects.annotate(members=Count("user"))
        .order_by("name")
        .values_list("name", "members")
    )
    return groups, people


@app.cell
def _(mo):
    mo.md(
        """
        # The team at a glance

        A static notebook: this page is a snapshot of the notebook's run, made
        in the background, the same for everyone. No kernel runs for you, so
        any number of visitors cost no more than one. It is made again every
        five minutes, and a few seconds after a user or a group is saved in
        the admin.
        """
    )
    return


@app.cell
def _(mo, people):
    mo.hstack(
        [
            mo.stat(people["users"], label="Users"),
            mo.stat(people["active"], label="Active"),
            mo.stat(people["staff"], label="Staff"),
        ],
        justify="start",
        gap=2,
    )
    return


@app.cell
def _(groups, mo):
    _table = "\n".join(
        ["| Group | Members |", "| --- | ---: |"]
        + [f"| {name} | {members} |" for name, members in groups]
    )
    mo.md("## Groups\n\n" + (_table if groups else "No groups yet."))
    return


if __name__ == "__main__":
    app.run()
