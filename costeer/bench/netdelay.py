"""A network round trip on loopback, for benchmarks: a TCP proxy that holds every chunk for half
the round-trip time in each direction. Nothing about the machine's network settings changes;
`rtt_ms` can be changed while it runs, so one server serves every simulated distance."""
from __future__ import annotations

import asyncio
import threading


class DelayProxy:
    def __init__(self, upstream: str, rtt_ms: float = 0.0):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream, self.rtt_ms = (host, int(port or 80)), rtt_ms
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="delay-proxy")
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self.loop).result()
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _connection(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        except asyncio.CancelledError:  # the proxy is closing: the connection is dropped
            writer.close()
            up_writer.close()

    async def _pipe(self, src, dst):
        """Copy src to dst in order, each chunk sent rtt/2 after it arrived."""
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                dst.write(data)
                await dst.drain()
            dst.close()

        sender = asyncio.ensure_future(send())
        try:
            while data := await src.read(1 << 16):
                queue.put_nowait((self.loop.time() + self.rtt_ms / 2000, data))
        finally:
            queue.put_nowait(None)
            try:
                await sender
            except (ConnectionError, asyncio.CancelledError):
                sender.cancel()

    def close(self):
        async def stop():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
