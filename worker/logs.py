"""Structured logging: JSON lines for machines, readable lines on a terminal.

Context (job_id, shard, uri, model version) is bound with
``structlog.contextvars.bound_contextvars`` where the work starts and appears on
every line logged inside it, including lines from Celery and boto3 that go
through the standard library's ``logging``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from worker.settings import Settings

_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to one stream (default stderr) in one format."""
    out = stream or sys.stderr
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not getattr(out, "isatty", lambda: False)()
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)())
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if as_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "PIL"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _identity(
    _logger: object, _name: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    return event


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger for one module; call at import time, log with key=value pairs."""
    return structlog.stdlib.get_logger(name)
