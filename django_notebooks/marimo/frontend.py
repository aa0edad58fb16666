"""marimo's frontend (its JavaScript, CSS and fonts), served better than
marimo serves it.

marimo sends its ~300 frontend files uncompressed and without long-lived
cache headers, below every notebook's URL. The bridge points marimo's
``asset_url`` at one place instead, chosen by the ``FRONTEND`` setting:

- ``"bridge"`` (default): a view of this app serves the files, compressed
  (brotli, a dependency, or gzip for browsers without it), with an ETag
  and ``Cache-Control: public, max-age=31536000, immutable``. The URL holds
  marimo's version, so a marimo upgrade changes every URL. No collectstatic.
- ``"staticfiles"``: ``collectstatic`` gathers the files (through
  ``django_notebooks.finders.MarimoFrontendFinder``) and the project's static
  file server (WhiteNoise, a CDN, nginx) serves them from ``STATIC_URL``.
- ``"marimo"``: marimo serves them itself, below each notebook.
- any URL containing ``{version}``: a CDN that mirrors marimo's frontend.

The files are marimo's open-source frontend, the same for every notebook and
every user, so they are served without the notebooks' access decision; they
hold nothing about any notebook.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import threading
from dataclasses import dataclass
from pathlib import Path

import marimo
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_safe

from django_notebooks import conf
from django_notebooks.marimo import internals

try:  # a dependency; an environment without it still gets gzip
    import brotli
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

STATIC_PREFIX = "django_notebooks/marimo"
IMMUTABLE = "public, max-age=31536000, immutable"
COMPRESSIBLE = (
    ".js",
    ".css",
    ".svg",
    ".json",
    ".html",
    ".txt",
    ".map",
    ".wasm",
    ".ttf",
    ".md",
)
# Compressing on the fly, once per file: quick levels, the result is cached.
BROTLI_QUALITY = 6
GZIP_LEVEL = 6


def asset_url() -> str | None:
    """What to pass as marimo's ``asset_url`` (``None``: marimo's own)."""
    mode = conf.get_settings().FRONTEND
    version = marimo.__version__
    if mode == "bridge":
        return reverse("django_notebooks:frontend", args=[version, ""]).rstrip("/")
    if mode == "staticfiles":
        # Not static(): manifest storages know files, not this folder, and
        # marimo's files load each other by their original names anyway.
        return f"{(settings.STATIC_URL or '/').rstrip('/')}/{STATIC_PREFIX}/{version}"
    if mode == "marimo":
        return None
    return str(mode)


@dataclass(frozen=True)
class Encoded:
    body: bytes
    etag: str


class CompressedFiles:
    """Compressed copies of the frontend's files, made when first asked for."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Path, str], Encoded] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, encoding: str) -> Encoded:
        key = (path, encoding)
        found = self._cache.get(key)
        if found is None:
            data = path.read_bytes()
            if encoding == "br":
                body = brotli.compress(data, quality=BROTLI_QUALITY)
            elif encoding == "gzip":
                body = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
            else:
                body = data
            digest = hashlib.blake2b(data, digest_size=12).hexdigest()
            found = Encoded(body, f'"{digest}-{encoding}"')
            with self._lock:
                self._cache[key] = found
        return found


compressed_files = CompressedFiles()


def _file_for(version: str, path: str) -> Path | None:
    if version != marimo.__version__:
        return None  # another marimo version's frontend
    root = internals.frontend_root()
    try:
        candidate = (root / path).resolve()
        candidate.relative_to(root)
        is_file = candidate.is_file()
    except (ValueError, OSError):
        # Outside the frontend, or a name no file can have (a NUL byte,
        # longer than the file system allows): not found, never an error.
        return None
    if not is_file or candidate.name.endswith((".md", ".html")):
        # index.html is marimo's page template, not an asset.
        return None
    return candidate


def _preferred_encoding(accept_encoding: str, path: Path) -> str:
    if not path.name.endswith(COMPRESSIBLE):
        return "identity"
    tokens = {token.split(";")[0].strip() for token in accept_encoding.split(",")}
    if "br" in tokens and brotli is not None:
        return "br"
    if "gzip" in tokens:
        return "gzip"
    return "identity"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def answer(
    version: str, path: str, *, accept_encoding: str, if_none_match: str | None
) -> Answer | None:
    """The response for one frontend file (``None``: no such file).

    Shared by the Django view and the ASGI fast path.
    """
    if conf.get_settings().FRONTEND != "bridge":
        return None  # the frontend is served elsewhere: nothing here
    file_path = _file_for(version, path)
    if file_path is None:
        return None
    encoding = _preferred_encoding(accept_encoding, file_path)
    encoded = compressed_files.get(file_path, encoding)
    headers = [
        ("Cache-Control", IMMUTABLE),
        ("ETag", encoded.etag),
        ("Vary", "Accept-Encoding"),
    ]
    if if_none_match == encoded.etag:
        return Answer(304, headers, b"")
    content_type = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
    headers += [
        ("Content-Type", content_type),
        ("Content-Length", str(len(encoded.body))),
    ]
    if encoding != "identity":
        headers.append(("Content-Encoding", encoding))
    return Answer(200, headers, encoded.body)


@require_safe
def frontend_file(request: HttpRequest, version: str, path: str) -> HttpResponse:
    """One file of marimo's frontend, compressed and cached for a year."""
    found = answer(
        version,
        path,
        accept_encoding=request.headers.get("Accept-Encoding", ""),
        if_none_match=request.headers.get("If-None-Match"),
    )
    if found is None:
        raise Http404("No such file.")
    response = HttpResponse(found.body, status=found.status)
    for name, value in found.headers:
        response[name] = value
    return response
