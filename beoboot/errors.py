"""Typed errors. Library code raises these; only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class BeobootError(Exception):
    """An error the user can act on: `message` names the bad input, `hint` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(BeobootError):
    """A config file, key or value that is not allowed."""

    exit_code = 2


class UsageError(BeobootError):
    """A command-line argument that is not allowed."""

    exit_code = 2


class SysrootError(BeobootError):
    """A path that is missing or escapes the sysroot."""


class ElfError(BeobootError):
    """A file that is not a readable ELF object."""


class MissingLibraryError(BeobootError):
    """A DT_NEEDED library that no search path provides."""

    def __init__(
        self, library: str, needed_by: str, searched: list[str] | None = None, passed_by: list[str] | None = None
    ) -> None:
        where = f" (searched {', '.join(searched)})" if searched else ""
        # files of that name the search found but could not use: "PATH: why"
        unusable = f"; passed by {'; '.join(passed_by)}" if passed_by else ""
        super().__init__(
            f"library {library} needed by {needed_by} not found{where}{unusable}",
            hint="install the package that provides it in the sysroot, or add its directory to ld.so.conf",
        )
        self.library = library
        self.needed_by = needed_by


class ModuleError(BeobootError):
    """A kernel module or alias that the kernel's module tree does not provide."""


class ConflictError(BeobootError):
    """Two different sources claim the same path in one image."""


class BudgetError(BeobootError):
    """An image is larger than its configured size budget."""


class OutputError(BeobootError):
    """An output directory a build cannot publish into without losing a file that is not the build's."""


class ToolError(BeobootError):
    """An external program (compressor, QEMU) that is missing or failed."""


class ImageError(BeobootError):
    """An image file that is not a readable (optionally compressed) newc cpio archive."""
