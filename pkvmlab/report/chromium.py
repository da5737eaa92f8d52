"""Headless Chromium: read a report page back as a browser sees it, and take its screenshot.

A report is only useful if it renders; Chromium (Debian's ``chromium``
package) is the check.  Each call gets a throwaway profile, no network
services, and a deadline: Chromium is a process tree (launcher script, browser,
zygote, renderers), so on timeout the whole process group is killed.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from ..errors import InfrastructureError

INSTALL_HINT = "apt-get install -y chromium"
MAX_HEIGHT = 12000   # pixels: a whole-page screenshot of a very large lab is cut here
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


class ChromiumMissing(InfrastructureError):
    """No Chromium on this host; the message says how to install it."""

    def __init__(self):
        super().__init__(f"chromium is not installed (looked for {', '.join(NAMES)} on PATH and "
                         f"$PKVMLAB_CHROMIUM); install it with: {INSTALL_HINT}")


class ChromiumError(InfrastructureError):
    """Chromium ran but failed or overran its deadline; carries the tail of its stderr."""


def find_chromium():
    """The Chromium executable ($PKVMLAB_CHROMIUM first), or None."""
    override = os.environ.get("PKVMLAB_CHROMIUM")
    if override:
        return shutil.which(override)
    return next((found for found in map(shutil.which, NAMES) if found), None)


def dump_dom(html_path, timeout=60):
    """The DOM of ``html_path`` after Chromium loaded and laid it out, serialised as HTML."""
    return _run(["--dump-dom", Path(html_path).resolve().as_uri()], timeout)


def page_height(html_path, width=1400, timeout=60):
    """The height in pixels of ``html_path`` laid out ``width`` wide (Chromium's CLI screenshots only the window).

    Measured on a copy with a one-line script appended: the report itself has none.
    """
    html_path = Path(html_path)
    with tempfile.TemporaryDirectory(prefix="pkvmlab-measure-") as tmp:
        copy = Path(tmp) / html_path.name
        probe = ("<script>document.documentElement.setAttribute('data-pkvmlab-height',"
                 "String(document.documentElement.scrollHeight))</script>")
        copy.write_text(html_path.read_text(encoding="utf-8") + probe, encoding="utf-8")
        dom = _run([f"--window-size={width},800", "--dump-dom", copy.as_uri()], timeout)
    found = re.search(r'data-pkvmlab-height="(\d+)"', dom)
    if not found:
        raise ChromiumError(f"chromium did not lay out {html_path} (no height in its DOM)")
    return int(found.group(1))


def screenshot(html_path, png_path, width=1400, height=1000, timeout=60):
    """A PNG of ``html_path`` at width x height (height None: the whole page, up to MAX_HEIGHT).

    Replaces ``png_path`` atomically.  Returns its path.
    """
    if height is None:
        height = min(MAX_HEIGHT, page_height(html_path, width, timeout) + 16)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{png_path.name}.", suffix=".png", dir=png_path.parent)
    os.close(fd)
    try:
        _run([f"--screenshot={tmp}", f"--window-size={width},{height}", Path(html_path).resolve().as_uri()],
             timeout)
        if os.path.getsize(tmp) == 0:
            raise ChromiumError(f"chromium wrote no screenshot of {html_path}")
        os.replace(tmp, png_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return png_path


def _run(args, timeout):
    binary = find_chromium()
    if binary is None:
        raise ChromiumMissing()
    with tempfile.TemporaryDirectory(prefix="pkvmlab-chromium-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise ChromiumError(f"chromium did not finish within {timeout} s: {' '.join(command)}\n"
                                f"{_tail(err)}") from None
        finally:
            _kill_group(proc)   # renderers left behind by the launcher script
    if proc.returncode != 0:
        raise ChromiumError(f"chromium exited {proc.returncode}: {' '.join(command)}\n{_tail(err)}")
    return out


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])
