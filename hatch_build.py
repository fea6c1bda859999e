"""Hatchling build hook: fetch the console page's third-party browser assets at build time.

xterm.js and its fit add-on come from the npm registry through ``npm ci``, which installs exactly what
``package-lock.json`` names and checks every tarball against the lockfile's sha512 ``integrity`` hash.  Only
``package.json`` and ``package-lock.json`` are committed; the copies in ``serialmuxd/web/vendor/`` are build
output (git-ignored) and are put into the wheel with ``force_include``, because hatchling leaves ignored
files out of it otherwise.

Editable installs (``pip install -e .``) import the package from the source tree, so there the hook only has
to make sure the files exist in ``serialmuxd/web/vendor/``.

Enabled in pyproject.toml by an (empty) ``[tool.hatch.build.hooks.custom]`` table.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

VENDOR_IN_PACKAGE = "serialmuxd/web/vendor"
# Path under node_modules/ -> file name in the vendor directory.
ASSETS = {
    "@xterm/xterm/lib/xterm.js": "xterm.js",
    "@xterm/xterm/css/xterm.css": "xterm.css",
    "@xterm/addon-fit/lib/addon-fit.js": "addon-fit.js",
    "@xterm/xterm/LICENSE": "LICENSE",
    # Same MIT terms, but its own copyright line: ship it too.
    "@xterm/addon-fit/LICENSE": "LICENSE.addon-fit",
}
NPM_CI = ["ci", "--ignore-scripts", "--no-audit", "--no-fund"]
NPM_MISSING = (
    "serialmuxd: building the package needs npm (Node.js) to fetch the browser console's assets "
    "(xterm.js, pinned in package-lock.json).  Install it first, e.g. `apt-get install npm`, "
    "then run the build or `pip install` again."
)


class CustomBuildHook(BuildHookInterface[BuilderConfig]):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return  # the sdist carries package.json + package-lock.json; its wheel build runs npm ci
        root = Path(self.root)
        vendor = root / VENDOR_IN_PACKAGE
        if _is_fresh(root, vendor):
            self.app.display_info("serialmuxd: browser assets are up to date, skipping npm ci")
        else:
            self._fetch(root, vendor)
        if version == "editable":
            return  # imported from the source tree, where the files now are
        for name in ASSETS.values():
            build_data["force_include"][str(vendor / name)] = f"{VENDOR_IN_PACKAGE}/{name}"

    def clean(self, versions: list[str]) -> None:
        shutil.rmtree(Path(self.root) / VENDOR_IN_PACKAGE, ignore_errors=True)

    def _fetch(self, root: Path, vendor: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(NPM_MISSING)
        # --ignore-scripts: no install-time code from the registry runs on the build machine.
        self.app.display_info(f"serialmuxd: npm {' '.join(NPM_CI)}")
        result = subprocess.run([npm, *NPM_CI], cwd=root, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"serialmuxd: `npm {' '.join(NPM_CI)}` failed (exit {result.returncode})")
        vendor.mkdir(parents=True, exist_ok=True)
        for source, name in ASSETS.items():
            # copyfile (not copy2): the copies get a new mtime, which is what _is_fresh compares.
            shutil.copyfile(root / "node_modules" / source, vendor / name)


def _is_fresh(root: Path, vendor: Path) -> bool:
    """True when every vendor file exists and is newer than package.json and package-lock.json."""
    try:
        built = min((vendor / name).stat().st_mtime for name in ASSETS.values())
        pinned = max((root / name).stat().st_mtime for name in ("package.json", "package-lock.json"))
    except FileNotFoundError:
        return False
    return pinned < built
