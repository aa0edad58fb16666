"""marimo empties the __main__ module it installed when a session ends; the
runserver autoreloader must survive that."""

import sys
import types

from django.utils.autoreload import StatReloader, autoreload_started

from django_notebooks.marimo import autoreload


def test_reloader_survives_a_kernel_main_module_left_empty(monkeypatch):
    reloader = StatReloader()
    autoreload_started.send(sender=reloader)
    emptied = types.ModuleType("__main__")
    emptied.__dict__.clear()  # what marimo's kernel teardown does
    monkeypatch.setitem(sys.modules, "__main__", emptied)

    files = list(reloader.watched_files())

    assert files  # the reloader read every module without crashing
    assert sys.modules["__main__"] is autoreload._process_main


def test_unguarded_reloader_would_crash(monkeypatch):
    emptied = types.ModuleType("__main__")
    emptied.__dict__.clear()
    monkeypatch.setitem(sys.modules, "__main__", emptied)
    try:
        list(StatReloader().watched_files())
    except AttributeError:
        return
    raise AssertionError(
        "Django's reloader no longer trips on an emptied __main__: drop the guard?"
    )


def test_a_live_kernel_main_module_is_left_alone(monkeypatch):
    live = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", live)
    autoreload.restore_main_module()
    assert sys.modules["__main__"] is live
