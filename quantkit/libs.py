"""Keep the libraries we build on from writing to stdout (which --json owns)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from typing import Iterator


def quiet_llmcompressor() -> None:
    """llm-compressor points loguru at sys.stdout on import; send its warnings and errors to stderr."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")  # it logs while importing
    import llmcompressor  # noqa: F401  (configures loguru on import)
    from loguru import logger

    logger.remove()
    logger.add(lambda msg: sys.stderr.write(msg), level="ERROR", format="{level}: {message}")
    import logging
    import warnings

    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)  # tracing notice on every layer
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)  # "offloaded to the disk" (int4 calibrate.py)
    warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def quiet_gguf() -> Iterator[None]:
    """gguf-py's warnings ("gguf" and its child loggers, e.g. SpecialVocab on post-processor shapes
    it half-understands) off stderr while it is used; what matters comes back to the user as notices."""
    import logging

    log = logging.getLogger("gguf")
    old = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


_BAR = re.compile(r"\d+%\|")


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """Drop the tqdm bars a library draws with disable=False hard-coded (compressed-tensors
    while loading); anything else it writes to stderr is passed on afterwards."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield
    finally:
        for line in re.split(r"[\r\n]", buf.getvalue()):
            if line.strip() and not _BAR.search(line):
                sys.stderr.write(line + "\n")
