"""What a job's environment names, so that it reads on the node what it read on the master: the locale
(setlocale), the time zone (localtime) and the terminal type (terminfo).
"""

# bpsh passes the user's environment, LANG=C.UTF-8 or en_GB.UTF-8 included, but a node's environment root
# holds only what jobs brought: without the locale's files, every program that calls setlocale() falls back
# to the C locale on the node (Python reads ASCII names as surrogates, `sort` orders differently) and perl
# prints a warning on every run. glibc looks for a locale in /usr/lib/locale/locale-archive first, then in
# the directory /usr/lib/locale/NAME, NAME as given or with its codeset normalised (UTF-8 -> utf8; see
# glibc's _nl_find_locale), and Debian installs C.UTF-8 as the directory C.utf8.
#
# The time zone likewise: without /etc/localtime, `date` and every log line of a job said UTC whatever the
# master's zone. A TZ naming a zone file (TZ=Europe/Paris, or :Europe/Paris) brings that file too.
#
# And the terminal: top, less, tput and every curses program refuse to start without the terminfo entry
# of $TERM ("terminals database is inaccessible"), found as ncurses finds it.

from __future__ import annotations

import os
import posixpath

LOCALE_DIR = "/usr/lib/locale"
LOCALTIME = "/etc/localtime"
ZONEINFO = "/usr/share/zoneinfo"
TERMINFO_DIRS = ("/etc/terminfo", "/lib/terminfo", "/usr/share/terminfo")  # ncurses' order on Debian
LOCALE_ARCHIVE = f"{LOCALE_DIR}/locale-archive"
# what setlocale(LC_ALL, "") reads, in glibc's order of precedence (any of them may name a locale)
LOCALE_VARIABLES = (
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
    "LANG",
)
BUILT_IN = {"", "C", "POSIX"}


def locale_names(env: dict[str, str]) -> list[str]:
    """The locales the environment names (LC_ALL alone when set: it overrides the rest), built-in ones
    left out. A name with a '/' is a path, which glibc refuses for many programs; it is not looked up."""
    named = [env["LC_ALL"]] if env.get("LC_ALL") else [env.get(name, "") for name in LOCALE_VARIABLES]
    return sorted({name for name in named if name not in BUILT_IN and "/" not in name})


def normalise_codeset(codeset: str) -> str:
    """glibc's _nl_normalize_codeset: letters and digits only, lower case; all digits get 'iso' before them."""
    kept = "".join(c.lower() for c in codeset if c.isalnum())
    return "iso" + kept if kept.isdigit() else kept


def normalised_name(name: str) -> str:
    """'en_GB.UTF-8@euro' -> 'en_GB.utf8@euro'."""
    base, at, modifier = name.partition("@")
    language, dot, codeset = base.partition(".")
    return f"{language}.{normalise_codeset(codeset)}{at}{modifier}" if dot else name


def locale_paths(env: dict[str, str], root: str = "/") -> list[str]:
    """The master's files and directories (paths as on the node) holding the locales `env` names: the
    archive, if there is one and any locale is named, and each locale's own directory."""
    names = locale_names(env)
    if not names:
        return []
    paths = [LOCALE_ARCHIVE] if os.path.isfile(_host(root, LOCALE_ARCHIVE)) else []
    for name in names:
        for candidate in dict.fromkeys((name, normalised_name(name))):
            directory = posixpath.join(LOCALE_DIR, candidate)
            if os.path.isdir(_host(root, directory)):
                paths.append(directory)
    return paths


def timezone_paths(env: dict[str, str], root: str = "/") -> list[str]:
    """/etc/localtime (a link to the master's zone file, which comes along with it) and the zone file a TZ
    names, as glibc reads them (tzset: a TZ starting with ':' or naming a file under the zone directory)."""
    paths = [LOCALTIME] if os.path.lexists(_host(root, LOCALTIME)) else []
    zone = env.get("TZ", "").removeprefix(":")
    if zone and ".." not in zone.split("/"):
        path = zone if zone.startswith("/") else posixpath.join(ZONEINFO, zone)
        if os.path.isfile(_host(root, path)):
            paths.append(path)
    return paths


def terminfo_paths(env: dict[str, str], root: str = "/") -> list[str]:
    """The terminfo entries of $TERM and of `dumb` (what programs take without a terminal: top -b), each
    from the first directory that has it (TERMINFO_DIRS)."""
    paths = []
    for term in dict.fromkeys((env.get("TERM", ""), "dumb")):
        if not term or "/" in term or term.startswith("."):
            continue
        for directory in TERMINFO_DIRS:
            path = posixpath.join(directory, term[0], term)
            if os.path.isfile(_host(root, path)):
                paths.append(path)
                break
    return paths


def environment_paths(env: dict[str, str], root: str = "/") -> list[str]:
    """Everything above for one environment."""
    return locale_paths(env, root) + timezone_paths(env, root) + terminfo_paths(env, root)


def _host(root: str, path: str) -> str:
    return root.rstrip("/") + path  # `path` is absolute
