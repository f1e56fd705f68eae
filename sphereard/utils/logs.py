"""One logging set-up for every process: stage scripts and Ray Tune trial workers."""

from __future__ import annotations

import logging
import os

LOG_LEVEL_ENV = "SPHEREARD_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """Root logger at $SPHEREARD_LOG_LEVEL (default INFO) with timestamps; a no-op if already set up."""
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format=LOG_FORMAT)
