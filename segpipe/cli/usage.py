"""argparse for segpipe's own subcommands: usage errors are raised, so that ``segpipe.cli.main`` reports them."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from segpipe.errors import SegpipeError


class UsageError(SegpipeError):
    """A command line that the subcommand's parser rejects (missing option, bad choice)."""


class CommandParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors raise :class:`UsageError` instead of printing and exiting.

    ``--help`` still prints and exits 0. Abbreviated options are off, so that a dotted config override
    (``--data.init_args.root``) is never taken for a prefix of one of the command's own options.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
