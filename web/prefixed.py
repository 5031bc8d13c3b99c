"""A Stream that first returns bytes already read from its transport.

HTTP upgrades read past the end of the handshake: the bytes after the blank
line belong to the next protocol.  ``PrefixedStream`` hands those back before
reading the transport again, so the next layer sees an unbroken byte stream.
"""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.Stream):
    """``transport`` with ``prefix`` replayed before its own bytes."""

    def __init__(self, prefix: bytes, transport: trio.abc.Stream) -> None:
        self._prefix = bytes(prefix)
        self.transport = transport

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send on the transport (errors are the transport's)."""
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """Delegates to the transport."""
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """Half-close the transport.

        Raises:
            NotImplementedError: the transport cannot half-close.
        """
        send_eof = getattr(self.transport, "send_eof", None)
        if send_eof is None:
            raise NotImplementedError("transport cannot half-close")
        await send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The replayed prefix first, then the transport's bytes."""
        if self._prefix:
            await trio.lowlevel.checkpoint()
            if max_bytes is None or max_bytes >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            return data
        return await self.transport.receive_some(max_bytes)

    async def aclose(self) -> None:
        """Close the transport."""
        self._prefix = b""
        await self.transport.aclose()
