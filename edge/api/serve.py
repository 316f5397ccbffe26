"""The API's server settings from the config: limits, Host allow-list, optional TLS."""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING

from edge.core.config import APIConfig
from edge.core.errors import ConfigError

if TYPE_CHECKING:  # imported where used: check_tls must not load the web stack
    import uvicorn
    from fastapi import FastAPI

    from edge.api.limits import RequestLimits


def request_limits(api: APIConfig) -> RequestLimits:
    from edge.api.limits import RequestLimits, default_hosts
    return RequestLimits(max_body_bytes=api.max_body_bytes, max_streams=api.max_streams,
                         max_streams_per_client=api.max_streams_per_client,
                         allowed_hosts=default_hosts(api.host, api.allowed_hosts))


def check_tls(api: APIConfig) -> None:
    """Load the certificate and key as uvicorn will, so a bad pair fails the start (and
    ``--check-config``) with the key at fault, not later inside the server thread."""
    if api.tls_cert_file is None or api.tls_key_file is None:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, path in (("api.tls_cert_file", api.tls_cert_file),
                      ("api.tls_key_file", api.tls_key_file)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{key} → {str(path)!r} → cannot read ({exc.strerror})") from exc
    try:
        ctx.load_cert_chain(str(api.tls_cert_file), str(api.tls_key_file))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"api.tls_cert_file → {str(api.tls_cert_file)!r} → not a PEM "
                          f"certificate matching api.tls_key_file ({exc})") from exc


def server_config(api: APIConfig, app: FastAPI) -> uvicorn.Config:
    import uvicorn
    check_tls(api)
    tls = api.tls_cert_file is not None and api.tls_key_file is not None
    config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2,
                            # uvicorn's own forwarded-header trust stays off: the client
                            # address is what the limits and the lock-out count by.
                            proxy_headers=False, server_header=False,
                            # The API has no websockets and no startup handlers: not
                            # loading uvicorn's websocket protocols saves ~0.4 MB RSS.
                            ws="none", lifespan="off",
                            ssl_certfile=str(api.tls_cert_file) if tls else None,
                            ssl_keyfile=str(api.tls_key_file) if tls else None)
    config.load()  # here, not in the server thread, so an error stops the start
    return config


def serve_in_thread(api: APIConfig, app: FastAPI) -> tuple[uvicorn.Server, threading.Thread]:
    """Start uvicorn on its own daemon thread; ``server.should_exit = True`` stops it."""
    import uvicorn
    server = uvicorn.Server(server_config(api, app))
    # uvicorn captures signals only when run from the main thread: the agent's own
    # SIGTERM handling stays in charge.
    t = threading.Thread(target=server.run, name="forewarn-api", daemon=True)
    t.start()
    return server, t
