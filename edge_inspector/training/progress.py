"""Progress for long steps that have no progress bar of their own (metrics, export, parity and latency checks).

``phase("metrics")`` shows ``metrics: 00:12`` ticking once a second while the block runs and leaves the final time
on screen, so a user never faces minutes of silence after the last progress bar.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from tqdm import tqdm


@contextlib.contextmanager
def phase(name: str, enabled: bool = True) -> Iterator[None]:
    """A ticking 'name: 12 s' line while the block runs (for steps with no progress bar of their own)."""
    bar = tqdm(desc=name, bar_format="{desc}: {elapsed}", disable=not enabled, leave=True)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()
