"""The terminal of a ``segpipe`` command: one log format, known third-party noise silenced narrowly, progress.

:func:`configure_console` is called once by the ``segpipe`` entry point (not on import: a program that uses
segpipe as a library keeps its own logging and warning set-up). Every filter names the module that speaks and
the message it drops, so a new warning from the same library still shows.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Lightning's rank-zero messages go through whichever of these its packages imported last.
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)

# (logger, start of the message): log records that say nothing actionable to a segpipe user.
QUIET_RECORDS = (
    *((name, "💡 Tip: For seamless cloud logging") for name in LIGHTNING_LOGGERS),  # the litlogger advert
    # segpipe pickles the model on purpose (any batch and image size; docs/mlflow.md)
    ("mlflow.pytorch", "Saving pytorch model by Pickle or CloudPickle format"),
    # uv environments have no pip; the model's requirements do not need its version
    ("mlflow.utils.environment", "Failed to resolve installed pip version"),
)

# (message regex, category, module regex) of deprecations inside third-party code that segpipe cannot act on.
QUIET_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # MONAI's own surface-distance metrics pass the argument it deprecates
    (r"monai\.metrics\.utils get_mask_edges:always_return_as_numpy", FutureWarning, r"monai\.utils\.deprecate_utils"),
)


class _CurrentStreamHandler(logging.Handler):
    """Information to ``sys.stdout``, warnings and errors to ``sys.stderr``, as the streams are when a record
    arrives.

    stderr then holds only what needs attention (a refused input is one ``segpipe: error:`` line there);
    a handler bound to the stream of its creation would keep writing to a closed stream once that stream
    is replaced (pytest's capture, a redirect by an embedding program).
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno <= logging.INFO else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's contract: a failing handler reports itself, never raises
            self.handleError(record)


class _PlainFormatter(logging.Formatter):
    """``message`` for information, ``warning: message`` (the level in lower case) above it."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}"


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def configure_console() -> None:
    """Set up logging and warnings for a ``segpipe`` command; calling it again changes nothing.

    Call it after the command's module is imported and before MLflow's PyTorch flavour is: that import runs
    ``logging.basicConfig``, which then finds the root handler installed here and changes nothing, so the
    ``pytorch_lightning`` loggers it imports print through that handler instead of with the ``INFO:name:``
    prefix.
    """
    _configure_logging()
    _filter_known_warnings()


def _configure_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(handler, _CurrentStreamHandler) for handler in root.handlers):
        handler = _CurrentStreamHandler()
        handler.setFormatter(_PlainFormatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    _route_lightning_logs()
    # MLflow's documented setting, read when MLflow is imported; its INFO lines (database set-up, "Detected
    # uv project") are not for users. An MLflow already imported gets the same level on its logger.
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING").upper()
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(level)
    for name, prefix in QUIET_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessages(prefix))


def _route_lightning_logs() -> None:
    """Print each Lightning record once, through the root handler.

    Lightning's top package gives the ``lightning`` logger its own ``LEVEL: message`` handler, and its
    subpackages propagate to it whenever the root logger has a handler, so every line would print twice.
    Once Lightning is imported its handlers go; before that, the ``lightning`` logger stops propagation, so
    a command that imports Lightning later prints each line once, through Lightning's handler.
    """
    top = logging.getLogger("lightning")
    if "lightning" not in sys.modules:
        top.propagate = False
        return
    for logger in (top, logging.getLogger("lightning.pytorch"), logging.getLogger("lightning.fabric")):
        logger.handlers.clear()
        logger.propagate = True


def _filter_known_warnings() -> None:
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield ``items``, showing a Rich progress bar on stderr while they are consumed.

    The bar shows only when stderr is a terminal and disappears when done, so logs, pipes and test output
    hold no bar.

    Args:
        items: the work, consumed lazily (a generator or an executor's ``map``).
        total: how many items there are.
        description: what is being done, e.g. ``caching volumes``.
    """
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    yield from track(items, description, total=total, console=console, transient=True, disable=not console.is_terminal)
