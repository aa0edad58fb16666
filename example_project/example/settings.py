"""Settings for the django_notebooks example project.

A development setup: DEBUG on, a SQLite file next to this project, channels'
in-memory layer. Everything django_notebooks needs is marked below.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = BASE_DIR / "notebooks"

# Fine for a demo on your own machine; never deploy this key.
SECRET_KEY = "django-insecure-example-project-for-django-notebooks"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    # First, so that `manage.py runserver` is daphne's ASGI server, which also
    # serves the notebooks' kernel websockets.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_notebooks",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"
ASGI_APPLICATION = "example.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # EXAMPLE_PROJECT_DB points the database elsewhere (the test suite
        # uses a temporary file so it never touches this checkout).
        "NAME": os.environ.get("EXAMPLE_PROJECT_DB", BASE_DIR / "db.sqlite3"),
    }
}

# One process, so the in-memory layer is enough to tell open notebook
# sessions that their user logged out. With several (uvicorn --workers 2),
# set REDIS_URL: the processes then share channels_redis's pub/sub layer,
# which also carries kernel calls to the process holding their session, and
# a Redis cache.
if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [os.environ["REDIS_URL"]]},
        }
    }
    # The lock that has one process at a time make a notebook's snapshot is
    # held in Django's cache: shared by the processes, it holds across them.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Notebook snapshots are files in Django's default storage, under MEDIA_ROOT:
# a folder of this project that git ignores (EXAMPLE_PROJECT_MEDIA points it
# elsewhere, as the test suite does).
MEDIA_ROOT = os.environ.get("EXAMPLE_PROJECT_MEDIA", BASE_DIR / "media")

DJANGO_NOTEBOOKS = {
    "NOTEBOOKS": {
        "savings": {
            "path": NOTEBOOKS_DIR / "savings.py",
            "title": "Savings calculator",
            "description": "Public: anyone can open it, logged in or not. "
            "Move the sliders and the table follows.",
            "public": True,
        },
        "whoami": {
            "path": NOTEBOOKS_DIR / "whoami.py",
            "title": "Who am I?",
            "description": "Any logged-in user. Shows what the notebook knows "
            "about you: request.user and request.meta. Closes after 2 minutes "
            "without use, and says so.",
            # Its own limits, over LIMITS below: a short idle timeout, to see
            # the notice a closed session leaves on the page.
            "limits": {"IDLE_TIMEOUT": 120},
        },
        "sales": {
            "path": NOTEBOOKS_DIR / "sales.py",
            "title": "Sales report",
            "description": "Members of the 'sales' group only (alice, not bob). "
            "A table with a region filter.",
            "groups": ["sales"],
        },
        "runaway": {
            "path": NOTEBOOKS_DIR / "runaway.py",
            "title": "Misbehaving cells",
            "description": "Any logged-in user. A cell that loops, allocates "
            "4 GB or crashes its kernel, on request: its kernel process is "
            "stopped or fails alone, and the page says why.",
            # Low limits of its own, to see them at work.
            "limits": {"CELL_TIMEOUT": 10, "MEMORY_MB": 256},
            # Its cells do not read the visitor, so a spare kernel would run
            # it before anyone asks (as it does lab/primes.py); this one runs
            # for each visitor, as a notebook whose cells have side effects
            # should.
            "pre_run": False,
        },
        "orders": {
            "path": NOTEBOOKS_DIR / "orders.py",
            "title": "Orders",
            "description": "Any logged-in user. Its URL takes parameters "
            "(?region=North&since=2025-02-01), checked by a Django form.",
            # A form that validates the page's query parameters; the notebook
            # gets its cleaned_data in mo.app_meta().request.meta["query"].
            "query": "demo.forms.OrdersQuery",
        },
        "team": {
            "path": NOTEBOOKS_DIR / "team.py",
            "title": "The team at a glance",
            "description": "Public and static: the page is a snapshot, the "
            "same for everyone, with no kernel per visitor. Made again every "
            "5 minutes, and when a user or group is saved.",
            "public": True,
            # The page is the snapshot: no kernel, no websocket, any number of
            # visitors (also embedded on the home page).
            "static": True,
            "snapshot": {
                "refresh": 300,
                # A save or delete of these in the admin makes it again, within
                # SNAPSHOT_MIN_INTERVAL (below) and a run.
                "models": ["auth.User", "auth.Group"],
            },
        },
        "slow": {
            "path": NOTEBOOKS_DIR / "slow.py",
            "title": "Slow report",
            "description": "Any logged-in user. Takes 2 seconds to run: the "
            "page shows its last snapshot at once, and the widget works once "
            "your own kernel has run it.",
            # Outputs first: the last snapshot shows while the visitor's own
            # kernel starts behind it. Made again every 10 minutes.
            "snapshot": {"refresh": 600},
        },
    },
    # Every notebook in this folder is served at /notebooks/lab/<file name>/
    # to logged-in users; add a file and it shows up without a restart.
    "DIRECTORIES": {"lab": NOTEBOOKS_DIR / "lab"},
    # What notebooks see as mo.app_meta().request.meta.
    "REQUEST_META": "demo.hooks.request_meta",
    # Each session's kernel runs in a process of its own (the default),
    # forked by the machine's kernel host, which the first server process
    # starts. Stop the server (Ctrl+C) and start it again within a minute:
    # open notebooks reconnect to their own kernels, as they were.
    "ISOLATION": "process",
    "KERNEL_HOST_GRACE": 60,
    # Limits on sessions (the defaults, written out): a cell may run two
    # minutes and a session's code allocate 1 GB; an open session is closed
    # after an hour without a widget change; this machine holds at
    # most 100 kernels (open pages, and closed tabs whose kernel waits out
    # marimo's session_ttl), anonymous visitors of "savings" at most 20 from
    # one address and 50 in all, so that half is kept for logged-in users.
    "LIMITS": {
        "CELL_TIMEOUT": 120,
        "MEMORY_MB": 1024,
        "IDLE_TIMEOUT": 3600,
        "MAX_SESSIONS": 100,
        "MAX_SESSIONS_PER_ADDRESS": 20,
        "MAX_ANONYMOUS_SESSIONS": 50,
    },
    # Snapshots (the defaults, written out): saves of a snapshot's models make
    # it again no sooner than 10 seconds after the last making started; a run
    # and its export may take 5 minutes; the files go to the "default"
    # storage (MEDIA_ROOT above).
    "SNAPSHOT_MIN_INTERVAL": 10,
    "SNAPSHOT_TIMEOUT": 300,
    "SNAPSHOT_STORAGE": "default",
}

# Show the demo's audit log (demo/audit.py) and the making of snapshots
# ("Made the snapshot of 'team' in 2.3 s") in the console.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "demo.audit": {"handlers": ["console"], "level": "INFO"},
        "django_notebooks.snapshots": {"handlers": ["console"], "level": "INFO"},
    },
}
