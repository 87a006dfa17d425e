"""``iisan serve``: a trained run behind uvicorn, with the request log."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from iisan.config import ServeConfig

log = logging.getLogger(__name__)


def serve(run_dir: str | Path, config: ServeConfig = ServeConfig(), device: str = "auto") -> None:
    """Load the run and serve it until interrupted (see :func:`~iisan.serving.service.create_app`).

    The request log is on unless ``config.access_log`` is off or the ``iisan`` logger is
    quieter than INFO (``iisan --quiet``).

    Raises:
        ConfigError: an empty or unreadable token file. DatasetError: the run cannot be used.
    """
    import uvicorn

    from iisan.serving.access_log import log_requests_to_stderr
    from iisan.serving.recommender import Recommender
    from iisan.serving.service import create_app, is_loopback, read_token

    token = read_token(config.token_file) if config.token_file is not None else None
    if token is None and not is_loopback(config.host):
        log.warning("binding %s without --token-file: anyone who can reach it can add items", config.host)
    recommender = Recommender.load(run_dir, device=device)
    # What was loaded lives as long as the process: keep it out of every later garbage
    # collection's scan (the catalogue's keys alone are a list and a dict of N entries).
    gc.freeze()
    log.info("serving %s items (%s index, model on %s) on http://%s:%d (docs: /docs)",
             f"{recommender.num_items:,}", recommender.index.kind, recommender.device, config.host,
             config.port)
    access_log = config.access_log and logging.getLogger("iisan").getEffectiveLevel() <= logging.INFO
    if access_log:
        log_requests_to_stderr(json_lines=config.log_format == "json")
    uvicorn.run(create_app(recommender, token, access_log=access_log), host=config.host, port=config.port,
                log_level="warning", access_log=False)
