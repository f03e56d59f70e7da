"""Work spread over a pool of Ray actors, the results in submission order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


def ordered_results(actors: Sequence[Any], call: Callable[[Any, T], Any], items: Iterable[T],
                    depth: int = 2) -> Iterator[Any]:
    """`ray.get(call(actor, item))` for each item, in the items' order. Each item goes to the
    actor with the fewest calls in flight, at most `depth` each: one runs while the next one's
    arguments are already shipped, so an actor does not wait for the driver between items, and
    a slow item does not hold back the other actors. `items` is read lazily (an item is made
    only when an actor has room for it); finished results wait for their turn."""
    import ray

    if not actors:
        raise ValueError("ordered_results needs at least one actor")
    pending = iter(items)
    order: deque[Any] = deque()  # submitted, not yet yielded, in order
    owner: dict[Any, int] = {}  # running ref -> its actor's index
    busy = [0] * len(actors)

    def top_up() -> None:
        while True:
            i = min(range(len(actors)), key=busy.__getitem__)
            if busy[i] >= max(1, depth):
                return
            item = next(pending, _END)
            if item is _END:
                return
            ref = call(actors[i], item)  # type: ignore[arg-type]
            order.append(ref)
            owner[ref] = i
            busy[i] += 1

    top_up()
    while order:
        head = order[0]
        while head in owner:
            done, _ = ray.wait(list(owner), num_returns=1)
            for ref in done:
                busy[owner.pop(ref)] -= 1
            top_up()
        yield ray.get(order.popleft())


@contextmanager
def actors(cls: type, n: int, *args: Any, num_cpus: float = 1, num_gpus: float = 0,
           restarts: int = 0) -> Iterator[list[Any]]:
    """`n` Ray actors of `cls(*args)` (one CPU each unless told), created at once (their
    processes start and import in the background) and killed when the block ends. A lost actor
    fails the job, unless `restarts`: then Ray restarts it that many times and reruns its calls
    (for actors whose state is their constructor's alone)."""
    import ray

    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=restarts,
                        max_task_retries=restarts)(cls)
    pool = [remote.remote(*args) for _ in range(n)]
    try:
        yield pool
    finally:
        for actor in pool:
            ray.kill(actor)
