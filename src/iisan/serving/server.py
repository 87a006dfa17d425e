"""``iisan serve``: a trained run behind uvicorn, with the request log."""

from __future__ import annotations

import gc
import logging
import socket
from pathlib import Path

from iisan.config import ServeConfig
from iisan.errors import ConfigError

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
    from iisan.serving.protocol import BoundedHeaders
    from iisan.serving.recommender import Recommender
    from iisan.serving.service import create_app, is_loopback, read_token

    token = read_token(config.token_file) if config.token_file is not None else None
    if token is None and not is_loopback(config.host):
        log.warning("binding %s without --token-file: anyone who can reach it can add items", config.host)
    listener = listening_socket(config.host, config.port)  # a taken port fails here, before the load
    port = listener.getsockname()[1]
    recommender = Recommender.load(run_dir, device=device)
    # What was loaded lives as long as the process: keep it out of every later garbage
    # collection's scan (the catalogue's keys alone are a list and a dict of N entries).
    gc.freeze()
    log.info("serving %s items (%s index, model on %s) on http://%s:%d (docs: /docs)",
             f"{recommender.num_items:,}", recommender.index.kind, recommender.device, config.host, port)
    access_log = config.access_log and logging.getLogger("iisan").getEffectiveLevel() <= logging.INFO
    flush = log_requests_to_stderr(json_lines=config.log_format == "json") if access_log else None

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets)  # the last requests answered, and logged
            if flush is not None:
                flush()

    Server(uvicorn.Config(create_app(recommender, token, access_log=access_log), log_level="warning",
                          access_log=False, http=BoundedHeaders)).run(sockets=[listener])


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening on ``host:port``, for uvicorn to serve on.

    Raises:
        ConfigError: the address cannot be used (taken, not this machine's, not allowed).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"cannot serve on {host}: {getattr(err, 'strerror', None) or err}") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        listener.bind(address)
        listener.listen(2048)
    except OSError as err:
        listener.close()
        raise ConfigError(f"cannot serve on {host}:{port}: {err.strerror or err}; choose another --port "
                          "or stop what holds it") from None
    listener.set_inheritable(True)
    return listener
