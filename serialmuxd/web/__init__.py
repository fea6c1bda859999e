"""The browser console page: static files the HTTP front end serves.

``STATIC_DIR`` holds our own page sources (served at ``/static/``); ``VENDOR_DIR`` holds xterm.js and its
fit add-on (served at ``/static/vendor/``).  The vendor files are not in the repository: the build hook
(``hatch_build.py``) fetches them with ``npm ci`` during ``pip install``.  They are kept apart from our
sources so that serving ``STATIC_DIR`` never exposes this module or its ``__pycache__``.
"""

from __future__ import annotations

from pathlib import Path

WEB_DIR: Path = Path(__file__).resolve().parent
STATIC_DIR: Path = WEB_DIR / "static"
VENDOR_DIR: Path = WEB_DIR / "vendor"
INDEX_PAGE: Path = STATIC_DIR / "index.html"  # GET /
CONSOLE_PAGE: Path = STATIC_DIR / "console.html"  # GET /console/{name}

# What the pages load from VENDOR_DIR (LICENSE files are shipped next to them, not loaded).
VENDOR_FILES: tuple[str, ...] = ("xterm.js", "xterm.css", "addon-fit.js")


def missing_vendor_files() -> list[str]:
    """Vendor files the console page needs but that are absent (a source checkout that was never built).

    The HTTP front end can log this at start-up: without them the console page cannot show a terminal.
    """
    return [name for name in VENDOR_FILES if not (VENDOR_DIR / name).is_file()]


# For the start-up warning when missing_vendor_files() is not empty.
MISSING_VENDOR_HINT = (
    "the browser console page cannot show a terminal: xterm.js is fetched at install time into "
    "serialmuxd/web/vendor/; run `pip install -e .` (needs npm) in the source tree"
)
