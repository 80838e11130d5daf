"""uvicorn's h11 protocol with the two guards it lacks, a header-read timeout and a hard
connection cap; and uvicorn's server, answering held long-polls as soon as it is asked to exit.

uvicorn times out only the idle gap between requests (`timeout_keep_alive`); a client that
sends nothing, or trickles its request line and headers a byte at a time, holds its
connection for ever (slowloris). Here each request's line and headers must be complete
within `header_timeout_s` of the connection opening, or of the next request's first byte
on a kept-alive connection; otherwise the connection is closed. Connections past
`max_connections` are closed as they open. Header size is bounded by h11 itself
(`h11_max_incomplete_event_size`); past it the answer is 431 rather than uvicorn's 400.

On SIGTERM uvicorn waits for running requests (up to `shutdown_timeout_s`) and then cuts
them off with a 500. A long-poll may wait a minute for nothing, so `DrainingServer` answers
every held long-poll at once with the round as it stands: its client polls again, on another
replica or on this one after the restart, and the shutdown waits only for real work.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import Server, ServerState

from aggregator_service.services.runner import RoundRunner

__all__ = ["DrainingServer", "guarded_h11"]

log = logging.getLogger("fedtune.server")


def guarded_h11(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An `H11Protocol` subclass carrying these limits (uvicorn's `http=` takes a class)."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, object],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._header_timer: asyncio.TimerHandle | None = None
            self._max_header_bytes = config.h11_max_incomplete_event_size

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                log.warning("connection refused: %d connections open", len(self.connections))
                self.transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self._arm_header_timer()  # the first byte of a kept-alive connection's next request
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm_header_timer()  # request line and headers are in

        def send_400_response(self, msg: str) -> None:
            buffered = len(self.conn.trailing_data[0])
            if self._max_header_bytes is not None and buffered > self._max_header_bytes:
                self._send_431()
            else:
                super().send_400_response(msg)

        def _send_431(self) -> None:
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
            reason = b"Request Header Fields Too Large"
            for event in (
                h11.Response(status_code=431, headers=headers, reason=reason),
                h11.Data(data=b"request headers too large"),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


class DrainingServer(Server):
    """uvicorn's server; asked to exit, it first answers the long-polls held open."""

    def __init__(self, config: Config, runner: RoundRunner) -> None:
        super().__init__(config)
        self.runner = runner

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runner.drain_polls()
        super().handle_exit(sig, frame)
