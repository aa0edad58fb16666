"""``manage.py demo``: everything the example needs, then the server.

Migrates the SQLite database, creates the demo users, prints where to go and
who to log in as, and starts ``runserver`` (daphne's, so websockets work).
"""

from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import autoreload

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8000

# username, password, groups, superuser
DEMO_USERS = [
    ("alice", "alice", ["sales"], False),
    ("bob", "bob", [], False),
    ("admin", "admin", [], True),
]


class Command(BaseCommand):
    help = (
        "Migrate the database, create the demo users (alice, bob, admin) "
        "and serve the example project on http://127.0.0.1:8000/."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "addrport",
            nargs="?",
            help="Port, or address:port, as for runserver (default 127.0.0.1:8000).",
        )
        parser.add_argument("--port", type=int, help="Port to serve on (default 8000).")
        parser.add_argument(
            "--noreload",
            action="store_true",
            help="Do not restart the server when code changes (passed to runserver).",
        )

    def handle(self, *args, **options):
        addrport = self.addrport(options["addrport"], options["port"])
        # With the autoreloader, runserver re-runs this command in a child
        # process that does the serving: the parent has already set up.
        if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) != "true":
            self.set_up()
            self.print_welcome(addrport)
        call_command("runserver", addrport, use_reloader=not options["noreload"])

    def addrport(self, addrport: str | None, port: int | None) -> str:
        if addrport and port:
            raise CommandError("Give either an address:port or --port, not both.")
        if addrport:
            return addrport if ":" in addrport else f"{DEFAULT_ADDRESS}:{addrport}"
        return f"{DEFAULT_ADDRESS}:{port or DEFAULT_PORT}"

    def set_up(self) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        with transaction.atomic():
            for username, password, groups, superuser in DEMO_USERS:
                self.ensure_user(username, password, groups, superuser)

    def ensure_user(
        self, username: str, password: str, groups: list[str], superuser: bool
    ) -> None:
        """Create the user, or put it back as the welcome text describes it
        (password and groups included) if it was changed since."""
        user, _created = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.is_active = True
        user.is_staff = user.is_superuser = superuser
        user.save()
        user.groups.set(Group.objects.get_or_create(name=name)[0] for name in groups)

    def print_welcome(self, addrport: str) -> None:
        url = f"http://{addrport}/"
        self.stdout.write(
            "\n"
            + self.style.SUCCESS("django_notebooks example project")
            + f"\n\n  Open  {url}\n\n"
            "  Log in as\n"
            "    alice / alice   in group 'sales': sees every notebook\n"
            "    bob   / bob     not in 'sales': no sales report\n"
            f"    admin / admin   superuser, for {url}admin/\n"
        )
        self.stdout.flush()
