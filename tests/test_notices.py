"""The words the page shows and how they reach it (notices.py), without a
server: a notice's frame, and what the page's script carries."""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict

from django_notebooks import notices


def test_a_notice_frame_carries_its_words_under_the_bridges_op():
    frame = json.loads(notices.KERNEL_CRASHED.frame())
    assert frame["op"] == notices.OP
    assert frame["data"]["title"] == notices.KERNEL_CRASHED.title
    assert frame["data"]["text"] == notices.KERNEL_CRASHED.text
    assert frame["data"]["final"] is True
    assert frame["data"]["then"] is None


def test_the_restarting_notice_leaves_the_page_reconnecting_and_says_what_follows():
    frame = json.loads(notices.SITE_RESTARTING.frame())["data"]
    # Not final: marimo's frontend keeps trying to reconnect.
    assert frame["final"] is False
    assert frame["title"] == "The site is restarting"
    then = frame["then"]
    assert then["title"] == "The notebook started again"
    assert "reset" in then["text"]
    assert then["final"] is False


def test_the_page_script_carries_the_restarting_notice_for_a_bare_1012_close():
    script = notices.page_script()
    found = re.match(r'<script data-restarting="([^"]*)">', script)
    assert found, script[:200]
    assert json.loads(html.unescape(found[1])) == asdict(notices.SITE_RESTARTING)
    assert script.endswith(notices.SCRIPT_FILE.read_text() + "</script>")
