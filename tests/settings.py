"""Minimal settings for the test suite."""

import os
import tempfile
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
NOTEBOOKS_DIR = TESTS_DIR / "notebooks"

SECRET_KEY = "django_notebooks-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "channels",
    "django_notebooks",
    "tests",
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

ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"

if os.environ.get("DJANGO_NOTEBOOKS_TEST_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "test",
            "HOST": "127.0.0.1",
            "PORT": 5432,
            "USER": os.environ.get("PGUSER", "postgres"),
            # tests/e2e/test_orm.py tags the server's connections to count
            # them, and keeps its tables in a schema of its own.
            "OPTIONS": {
                "application_name": os.environ.get(
                    "DJANGO_NOTEBOOKS_TEST_PG_APPLICATION", "django_notebooks-tests"
                ),
                "options": "-c search_path="
                + os.environ.get("DJANGO_NOTEBOOKS_TEST_PG_SCHEMA", "public"),
            },
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_NOTEBOOKS_TEST_SQLITE", ":memory:"),
            # Several server processes share the file in the end-to-end
            # tests, on a busy machine: wait for the write lock.
            "OPTIONS": {"timeout": 30},
            # In-process tests write from several threads at once (a view,
            # a consumer closing its session, a record's activity), as a
            # server does. Django's in-memory test database shares one cache
            # between connections, where a writer makes the others fail at
            # once ("database table is locked") instead of waiting: a file
            # waits, as a project's SQLite file does.
            "TEST": {
                "NAME": str(
                    Path(tempfile.gettempdir())
                    / f"django_notebooks-tests-{os.getpid()}.sqlite3"
                )
            },
        }
    }

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [TESTS_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# "redis": channels_redis's list-based layer; "redis-pubsub": its pub/sub one,
# each configured as docs/topics/deployment.md shows.
_LAYER = os.environ.get("DJANGO_NOTEBOOKS_TEST_CHANNEL_LAYER")
_REDIS = os.environ.get("DJANGO_NOTEBOOKS_TEST_REDIS", "redis://127.0.0.1:6379/0")
_REDIS_PREFIX = os.environ.get("DJANGO_NOTEBOOKS_TEST_REDIS_PREFIX", "dn-tests")
if _LAYER == "redis-pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [_REDIS], "prefix": _REDIS_PREFIX},
        }
    }
elif _LAYER == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": _REDIS,
                        # redis-py 8 reads with a 5 s timeout by default, as
                        # long as channels_redis's blocking BZPOPMIN waits: on
                        # a busy event loop the read times out first and the
                        # consumer (the websocket) dies. Wait as redis-py 7 did.
                        "socket_timeout": None,
                    }
                ],
                "prefix": _REDIS_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# One server process per test: the in-memory layer is what they need.
SILENCED_SYSTEM_CHECKS = ["django_notebooks.W005"]

LOGIN_URL = "/accounts/login/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
# Uploads and notebook snapshots: never in the source tree.
MEDIA_ROOT = os.environ.get("DJANGO_NOTEBOOKS_TEST_MEDIA") or os.path.join(
    tempfile.gettempdir(), f"django-notebooks-tests-media-{os.getuid()}"
)

DJANGO_NOTEBOOKS: dict[str, Any] = {
    "NOTEBOOKS": {
        "square": NOTEBOOKS_DIR / "square.py",
        "hello": {
            "path": NOTEBOOKS_DIR / "whoami.py",
            "public": True,
            "title": "Hello",
        },
        "sales": {"path": NOTEBOOKS_DIR / "whoami.py", "groups": ["sales"]},
        "report": {
            "path": NOTEBOOKS_DIR / "whoami.py",
            "permissions": ["auth.view_user", "auth.change_user"],
        },
        "ops": {
            "path": NOTEBOOKS_DIR / "whoami.py",
            "access": "tests.access_rules.is_ops",
        },
        "whoami": NOTEBOOKS_DIR / "whoami.py",
        "files": NOTEBOOKS_DIR / "files.py",
        # CPU-bound work per run: bench/workers.py measures throughput with it.
        "cpu": NOTEBOOKS_DIR / "cpu.py",
    },
    "DIRECTORIES": {"lab": NOTEBOOKS_DIR / "lab"},
    "MARIMO": {
        "session_ttl": int(os.environ.get("DJANGO_NOTEBOOKS_TEST_SESSION_TTL", "5"))
    },
    "REQUEST_META": "tests.access_rules.request_meta",
    "MAX_SESSIONS_PER_USER": int(
        os.environ.get("DJANGO_NOTEBOOKS_TEST_MAX_SESSIONS", "5")
    ),
}

# Where kernels run: the compatibility pass runs the suite in thread mode.
DJANGO_NOTEBOOKS["ISOLATION"] = os.environ.get(
    "DJANGO_NOTEBOOKS_TEST_ISOLATION", "process"
)
# A server's kernels end with it, unless a test of restarts asks for a grace
# period (tests/e2e/test_kernel_host.py): no test leaves a host behind.
DJANGO_NOTEBOOKS["KERNEL_HOST_GRACE"] = float(
    os.environ.get("DJANGO_NOTEBOOKS_TEST_HOST_GRACE", "0")
)
# No spare kernels (counted by the tests of caps and processes), unless a
# test of spares asks (tests/e2e/test_kernel_host.py).
DJANGO_NOTEBOOKS["KERNEL_SPARES"] = int(
    os.environ.get("DJANGO_NOTEBOOKS_TEST_SPARES", "0")
)
# What notebooks print, in the server's log (tests/e2e/test_isolation.py).
DJANGO_NOTEBOOKS["LOG_NOTEBOOK_OUTPUT"] = bool(
    os.environ.get("DJANGO_NOTEBOOKS_TEST_LOG_OUTPUT")
)

# A notebook that loops, blocks, allocates or crashes on request
# (tests/e2e/test_isolation.py).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_MISBEHAVE"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["misbehave"] = {
        "path": NOTEBOOKS_DIR / "misbehave.py",
        "public": True,
    }

# A notebook whose output shows what its kernel kept (tests of the kernel
# host: tests/e2e/test_kernel_host.py, tests/browser/test_restart.py).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_KEPT"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["kept"] = NOTEBOOKS_DIR / "kept.py"

# A notebook that counts its runs and takes a while, and one that reads its
# visitor (tests of pre-run spare kernels: tests/e2e/test_pre_run.py).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_RUNS"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["pre_run"] = NOTEBOOKS_DIR / "pre_run.py"
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["pre_run_off"] = {
        "path": NOTEBOOKS_DIR / "pre_run.py",
        "pre_run": False,
    }

# Snapshots (tests/e2e/test_snapshots.py): a public static notebook, a static
# one for the "sales" group, and one shown outputs first; the first made
# again when an auth group is saved. DJANGO_NOTEBOOKS_TEST_SNAPSHOTS names
# the notebook file (a copy the tests may edit).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_SNAPSHOTS"):
    _snapshot_file = Path(os.environ["DJANGO_NOTEBOOKS_TEST_SNAPSHOTS"])
    _refresh = os.environ.get("DJANGO_NOTEBOOKS_TEST_SNAPSHOT_REFRESH")
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["kpis"] = {
        "path": _snapshot_file,
        "public": True,
        "static": True,
        "snapshot": {
            "models": ["auth.Group"],
            "refresh": float(_refresh) if _refresh else None,
        },
    }
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["kpis_sales"] = {
        "path": NOTEBOOKS_DIR / "snapshot.py",
        "groups": ["sales"],
        "static": True,
        "snapshot": {},
    }
    # Made as alice: every viewer sees what she would.
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["kpis_alice"] = {
        "path": NOTEBOOKS_DIR / "whoami.py",
        "public": True,
        "static": True,
        "snapshot": {"as_user": "alice"},
    }
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["report"] = {
        "path": NOTEBOOKS_DIR / "snapshot.py",
        "public": True,
        "snapshot": {},
    }
    DJANGO_NOTEBOOKS["SNAPSHOT_MIN_INTERVAL"] = float(
        os.environ.get("DJANGO_NOTEBOOKS_TEST_SNAPSHOT_INTERVAL", "2")
    )
    # The keeper's INFO lines ("Making the snapshot of ..."), which the
    # tests count, under every server (uvicorn configures no root logger).
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler"}},
        "loggers": {
            "django_notebooks.snapshots": {
                "handlers": ["console"],
                "level": "INFO",
                "propagate": False,
            }
        },
    }

# A notebook that sends many large outputs on request, and the websocket's
# flow control set low (tests/e2e/test_flow.py, tests/browser/test_flow.py).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_OUTPUTS"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["outputs"] = {
        "path": NOTEBOOKS_DIR / "outputs.py",
        "public": True,
    }
for _flow_key in ("MAX_UNREAD_WEBSOCKET_BYTES", "WEBSOCKET_READ_TIMEOUT"):
    if os.environ.get(f"DJANGO_NOTEBOOKS_TEST_{_flow_key}"):
        DJANGO_NOTEBOOKS[_flow_key] = int(
            os.environ[f"DJANGO_NOTEBOOKS_TEST_{_flow_key}"]
        )

# Limits the end-to-end and browser tests of limits set low.
for _limit in (
    "CELL_TIMEOUT",
    "MEMORY_MB",
    "IDLE_TIMEOUT",
    "MAX_SESSIONS",
    "MAX_SESSIONS_PER_ADDRESS",
    "MAX_ANONYMOUS_SESSIONS",
):
    if os.environ.get(f"DJANGO_NOTEBOOKS_TEST_LIMIT_{_limit}"):
        DJANGO_NOTEBOOKS.setdefault("LIMITS", {})[_limit] = int(
            os.environ[f"DJANGO_NOTEBOOKS_TEST_LIMIT_{_limit}"]
        )

# A notebook closed after this many seconds without use (its own limits).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_IDLE_NOTEBOOK"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["idle"] = {
        "path": NOTEBOOKS_DIR / "square.py",
        "limits": {
            "IDLE_TIMEOUT": int(os.environ["DJANGO_NOTEBOOKS_TEST_IDLE_NOTEBOOK"])
        },
    }

# A directory the end-to-end tests add notebooks to while the server runs.
if os.environ.get("DJANGO_NOTEBOOKS_TEST_DROPBOX"):
    DJANGO_NOTEBOOKS["DIRECTORIES"]["dropbox"] = Path(
        os.environ["DJANGO_NOTEBOOKS_TEST_DROPBOX"]
    )

# A notebook that uses the ORM in its cells (tests/e2e/test_orm.py).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_ORM"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"]["orm"] = NOTEBOOKS_DIR / "orm.py"

# Notebooks that validate their query parameters (tests/e2e/test_query.py
# starts a server with them; in-process tests use override_settings).
if os.environ.get("DJANGO_NOTEBOOKS_TEST_QUERY"):
    DJANGO_NOTEBOOKS["NOTEBOOKS"].update(
        {
            "query-form": {
                "path": NOTEBOOKS_DIR / "query.py",
                "query": "tests.notebooks.query_forms.SalesQuery",
            },
            "query-model": {
                "path": NOTEBOOKS_DIR / "query.py",
                "query": "tests.notebooks.query_forms.SalesModel",
            },
        }
    )
