"""What the server's coroutines share on the event loop: one worker thread for every call into the server, one
condition that every change of the federation's state notifies, and a way to let a state change run to its end
when the request that began it is cancelled.

The server's torch work runs in the worker thread, one call at a time, so the event loop keeps receiving
requests and sending replies while a step computes: a request that waited unread behind another client's step
would reach its client's clock as link time, and that client's next time budget would be too long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# One thread for every call into a server: torch's thread pools and state stay with one thread, as when the calls
# ran on the loop's (a call in a fresh thread each time would start a fresh OpenMP team and crowd 2 cores).
_SERVER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitft-server")


class Worker:
    """The worker thread's lock (`torch`), the condition of every change (`changed`), and what else runs on a
    change (`on_change`: e.g. starting a joined server step that the change made ready)."""

    def __init__(self) -> None:
        self.torch = asyncio.Lock()  # one call into the server at a time, in the worker thread (`compute`)
        self.changed = asyncio.Condition()
        self.on_change: list[Callable[[], None]] = []

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` (a call into the server) in the worker thread, after the calls before it: the server's
        state is only ever touched by one call at a time, as when the calls ran inline, while the loop stays free.
        The lock is held until the thread is done, even if the awaiting request is cancelled meanwhile."""
        await self.torch.acquire()
        work = asyncio.get_running_loop().run_in_executor(_SERVER_THREAD, fn, *args)
        return await to_the_end(work, self.torch)

    async def wait(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds, checked at every change."""
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def notify(self) -> None:
        """The federation's state changed: wake every waiter, run `on_change`."""
        async with self.changed:
            self.changed.notify_all()
        for fn in self.on_change:
            fn()


def to_the_end(work: Awaitable[Any], lock: asyncio.Lock | None = None) -> Awaitable[Any]:
    """`work` as a task that runs to its end, releasing `lock` (held by the caller) when it ends, behind a shield:
    a request cancelled meanwhile (its client disconnected) leaves the state change it began whole, never half
    done (a step applied but not counted, a thread still in `server` with the lock let go)."""
    task = asyncio.ensure_future(work)

    def ended(t: asyncio.Future) -> None:
        if lock is not None:
            lock.release()
        if not t.cancelled():
            t.exception()  # retrieved: a failure nobody awaited any more is not reported as never retrieved

    task.add_done_callback(ended)
    return asyncio.shield(task)
