"""File events only wake the reader early; the periodic stat sweep stays the truth.

watchdog drops the kernel's queue-overflow events and runs every handler on
one thread, so its only job here is to set the reader's wake event when
something changes in a folder a source watches.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from agent.config import Source

log = logging.getLogger("logmend")


def watch_sources(sources: tuple[Source, ...], wake: threading.Event, poll: float) -> Any:
    """Start watching the sources' folders; the observer (to stop), or None if unavailable."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Wake(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            wake.set()

    directories = set()
    for source in sources:
        directory = Path(source.path)
        while any(ch in str(directory) for ch in "*?["):
            directory = directory.parent
        directories.add(directory if directory != Path(source.path) else directory.parent)
    observer = Observer()
    try:
        for directory in directories:
            if directory.is_dir():
                observer.schedule(Wake(), str(directory), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as exc:
        log.warning("file events unavailable (%s); polling every %.1fs", exc, poll)
        return None
    return observer
