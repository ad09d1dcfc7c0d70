"""setuptools' one hook here: `bpsh` is installed compiled (beoboot/master/bpsh/fast/bpsh.c), not as pip's
console-script wrapper, which starts the interpreter with site and the package finders before bpsh runs:
50 ms for a job that takes 3, and launchers run bpsh once per node. Everything else is in pyproject.toml."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

try:
    from setuptools.command.build_scripts import build_scripts
except ImportError:  # setuptools before 69.1 (Debian's 66): its distutils' own, which setuptools provides
    from distutils.command.build_scripts import build_scripts

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this tree's compile.py, under pip's build isolation

from beoboot.master.bpsh.fast.compile import BESIDE, SOURCE, compile_client, installed_fallback  # noqa: E402


class BuildCompiledBpsh(build_scripts):
    """The scripts are the one executable `bpsh`, compiled from bpsh.c (the one entry of `scripts`)."""

    def run(self) -> None:
        # sys.executable: the interpreter pip installs for, whose beoboot the fallback imports
        compile_client(Path(self.build_dir) / "bpsh", installed_fallback(sys.executable), BESIDE)


class CompiledDistribution(Distribution):
    """A wheel holding a compiled program is for this platform only, not py3-none-any."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    scripts=[str(SOURCE.relative_to(Path(__file__).resolve().parent))],
    cmdclass={"build_scripts": BuildCompiledBpsh},
    distclass=CompiledDistribution,
)
