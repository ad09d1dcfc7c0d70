"""The Perl modules a Perl job uses beyond perl-base: `bpsh 0 perl -MData::Dumper -e ...`, or a script that
says `use JSON::PP; use lib "$FindBin::Bin/lib"; use My::Module;`.
"""

# Every Perl job gets Debian's perl-base (strict, warnings, POSIX, ...: beoboot.master.manifest.describe.perl_runtime).
# The rest of the core library, Debian's libxxx-perl packages, CPAN installs under /usr/local and a
# program's own modules are found here as perl will find them on the node: each `use`/`require`/`no` of the
# program (and `use parent`/`use base`, and -M/-m), looked up in perl's @INC (the -I directories, `use
# lib` directories with $FindBin::Bin as the script's own, PERL5LIB unless -T, then the master perl's own
# @INC), and again in each module found, without running anything. An XS module brings its auto/ directory
# (its shared object, with that object's libraries). Modules only named at run time (`require $class`) still
# need --cache.

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from beoboot.master.manifest import budget as jobbudget
from beoboot.master.manifest.sourcecache import PerFile, Searches, read_text
from beoboot.master.manifest.sourcewatch import SourceWatch

MAX_MODULES = 5000
MAX_SOURCE = 4 << 20
# one-letter switches whose value follows attached, ending the cluster (-i.bak, -F:, -C7, -xdir, -D...);
# -0 and -l take only digits, so letters after those are switches again (-0777ne, -wle)
ATTACHED_VALUE = "idFCxDV"
# a statement starts a line, or follows ';', '{' or '}' (`use A; use B;`, `eval { require C }`)
STATEMENT = r"(?:^|[;{}])[ \t]*"
USE = re.compile(STATEMENT + r"(?:use|no|require)[ \t]+([A-Za-z_]\w*(?:::\w+)*)", re.M)
PARENTS = re.compile(STATEMENT + r"use[ \t]+(?:parent|base)\b(.*?);", re.M | re.S)
LIB = re.compile(STATEMENT + r"use[ \t]+lib\b(.*?);", re.M | re.S)
# `require "unicore/Name.pm"`, `do "unicore/Name.pl"`: a file looked up in @INC like a module's
FILE = re.compile(r"\b(?:require|do)[ \t]+[\"']([\w/.-]+\.p[lm])[\"']")
NAMED_CHARACTER = re.compile(r"\\N\{[^}]*[A-Za-z]")  # \N{SNOWMAN}: perl loads _charnames for it itself
WORDS = re.compile(r"""qw\s*[(\[{/]([^)\]}/]*)|'([^']*)'|"([^"]*)\"""")
POD = re.compile(r"^=[a-zA-Z].*?^=cut\b[^\n]*", re.M | re.S)
END = re.compile(r"^__(?:END|DATA)__\b", re.M)
FINDBIN = re.compile(r"\$\{?FindBin::(?:Real)?Bin\}?")


@dataclass(frozen=True)
class PerlStart:
    perl: str  # the interpreter's real file
    cwd: str
    script: str | None = None
    code: str = ""  # the -e/-E texts
    modules: tuple[str, ...] = ()  # -M/-m
    include: tuple[str, ...] = ()  # -I directories
    taint: bool = False  # -T/-t: PERL5LIB ignored


def perl_start(perl: str, args: tuple[str, ...], cwd: str) -> PerlStart:
    """perl's command line (perlrun): switches, clustered or not (-wle CODE), then the program file."""
    code: list[str] = []
    modules: list[str] = []
    include: list[str] = []
    taint = False
    script = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            script = rest[0] if rest else None
            break
        if arg == "-" or not arg.startswith("-"):
            script = None if arg == "-" or code else arg  # after -e, the rest is @ARGV
            break
        index = 1
        while index < len(arg):
            letter, index = arg[index], index + 1
            if letter in "0l":  # -0[octal or xHEX], -l[octal]: the letters after the digits are switches again
                digits = "01234567"
                if letter == "0" and arg[index : index + 1] in ("x", "X"):
                    digits, index = "0123456789abcdefABCDEF", index + 1
                while index < len(arg) and arg[index] in digits:
                    index += 1
                continue
            value = arg[index:]
            if letter in "eEI":
                value = value or (rest.pop(0) if rest else "")
                if letter == "I":
                    include.append(posixpath.normpath(posixpath.join(cwd, value)))
                else:
                    code.append(value)
                break
            if letter in "Mm":
                modules.append(re.split(r"[=\s]", value.lstrip("-"), maxsplit=1)[0])
                break
            if letter in "Tt":
                taint = True
            if letter in ATTACHED_VALUE:
                break
    if script is not None:
        script = posixpath.normpath(posixpath.join(cwd, script))
    return PerlStart(perl, cwd, script, "\n".join(code), tuple(modules), tuple(include), taint)


def module_file(name: str) -> str:
    """Data::Dumper -> Data/Dumper.pm; a file name (unicore/Name.pl) as it is."""
    return name if name.endswith((".pm", ".pl")) else name.replace("::", "/") + ".pm"


def perl_uses(text: str) -> tuple[list[str], list[str]]:
    """(modules, `use lib` texts) of Perl source: POD and what follows __END__/__DATA__ left out."""
    text = END.split(text, maxsplit=1)[0]
    text = POD.sub("", text)
    modules = [name for name in USE.findall(text) if name not in ("lib", "parent", "base")]
    for words in PARENTS.findall(text):
        modules += [name for name in _words(words) if name != "-norequire"]
    modules += FILE.findall(text)  # file names, not module names: module_file() leaves them as they are
    if NAMED_CHARACTER.search(text):
        modules.append("_charnames")
    return modules, [d for text_of_lib in LIB.findall(text) for d in _words(text_of_lib)]


def _words(text: str) -> list[str]:
    found: list[str] = []
    for qw, single, double in WORDS.findall(text):
        found += qw.split() if qw else [single or double]
    return found


class PerlModules:
    """The paths a Perl job's modules need, cached per way of starting perl while nothing in the directories
    searched or read changed; each file's `use` lines, and each perl's @INC, are cached by stat key."""

    def __init__(self) -> None:
        self._searches = Searches()
        self._uses_of = PerFile(lambda path, key: perl_uses(read_text(path, key, MAX_SOURCE)))
        self.perl_inc = PerFile(lambda perl, key: _perl_inc(perl))

    def paths(self, start: PerlStart, env: Mapping[str, str], *, cached_only: bool = False) -> tuple[str, ...] | None:
        key = (start, env.get("PERL5LIB"))
        return self._searches.get(key, lambda watch: self._search(start, env, watch), cached_only=cached_only)

    def _search(self, start: PerlStart, env: Mapping[str, str], watch: SourceWatch) -> list[str]:
        system = self.perl_inc(start.perl)
        base = [d for d in system if posixpath.basename(d) == "perl-base"]  # every Perl job has these already
        extra = [*start.include, *([] if start.taint else [d for d in env.get("PERL5LIB", "").split(":") if d])]
        brought: dict[str, None] = {}
        queue: list[tuple[str, str | None]] = []  # (text or "", file to read)
        if start.script and os.path.isfile(start.script):
            brought[start.script] = None
            queue.append(("", start.script))
            watch.add(posixpath.dirname(start.script))
        if start.code:
            queue.append((start.code, None))
        queue += [(f"use {name};", None) for name in start.modules]
        script_dir = posixpath.dirname(start.script) if start.script else start.cwd
        seen: set[str] = set()
        scanned = 0
        while queue and scanned < MAX_MODULES:
            text, source = queue.pop()
            scanned += 1
            jobbudget.check()
            modules, libs = perl_uses(text) if source is None else self._uses_of(source)
            for lib in libs:  # `use lib` comes first in @INC, from where it is compiled on
                directory = posixpath.normpath(posixpath.join(start.cwd, FINDBIN.sub(script_dir, lib)))
                if directory not in extra:
                    extra.insert(0, directory)
            search = [*extra, *system]
            for name in modules:
                if name in seen:
                    continue
                seen.add(name)
                found = _find(module_file(name), search, watch)
                if found is None or found[1] in base:
                    continue  # a pragma or version (use 5.010), a missing module, or one of perl-base's
                path, inc_dir = found
                brought[path] = None
                auto = posixpath.join(inc_dir, "auto", name.replace("::", "/"))
                if os.path.isdir(auto):
                    brought[auto] = None  # an XS module's shared object (its libraries come with it)
                queue.append(("", path))
        return list(brought)


def _perl_inc(perl: str) -> tuple[str, ...]:
    """The master perl's own @INC. It is run with no environment at all (no PERL5LIB, no PERL5OPT), so
    it runs nothing of anyone's."""
    try:
        out = subprocess.run(
            [perl, "-e", 'print join("\\n", @INC), "\\n"'],
            env={},
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line for line in out.splitlines() if line.startswith("/"))


def _find(relative: str, search: list[str], watch: SourceWatch) -> tuple[str, str] | None:
    """(file, @INC directory) of the first directory that has `relative`, as require does."""
    for directory in search:
        # watched where looked, found or not: a module put later where require looks first is seen
        watch.add(directory)
        candidate = posixpath.join(directory, relative)
        watch.add(posixpath.dirname(candidate))
        if os.path.isfile(candidate):
            return candidate, directory
    return None
