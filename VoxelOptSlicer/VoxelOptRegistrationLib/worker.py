"""The engine run off the GUI thread: a Python worker thread that the main thread polls.

The GUI must never freeze, but MRML (and Qt) may only be touched on the main thread. So a run is
split (see :mod:`.logic`): the main thread prepares the inputs, an :class:`EngineWorker` runs only
the engine's compute (no MRML access) on a thread, and the main thread polls it with a timer
(``QTimer`` in the widget, a loop in headless scripts and tests), shows the progress and, once
:attr:`EngineWorker.done`, writes the results.

Cancel: :meth:`EngineWorker.cancel` sets a flag that the engine's ``cancel()`` callback reads
between steps; the run then ends with ``voxelopt.RegistrationCancelled`` in :attr:`error`.
"""

import threading
from typing import Any, Callable, Optional, Tuple

#: compute(progress, cancel) -> result, with progress(fraction, message) and cancel() -> bool.
Compute = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


class EngineWorker:
    """Runs ``compute(progress, cancel)`` on a daemon thread; every attribute is safe to read from the main thread."""

    def __init__(self, compute: Compute) -> None:
        self._compute = compute
        self._cancelled = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="VoxelOpt engine", daemon=True)
        #: The latest (fraction 0-1, message) reported by the engine.
        self.progress: Tuple[float, str] = (0.0, "starting")
        #: What compute returned (when done without error).
        self.result: Any = None
        #: The exception compute raised (``voxelopt.RegistrationCancelled`` after :meth:`cancel`), or None.
        self.error: Optional[BaseException] = None

    def start(self) -> "EngineWorker":
        """Start the thread; returns self."""
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the engine to stop at its next step."""
        self._cancelled.set()

    @property
    def cancelRequested(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        """True when compute has returned or raised."""
        return self._finished.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until done (or ``timeout`` seconds); returns :attr:`done`. For scripts and tests."""
        return self._finished.wait(timeout)

    def _report(self, fraction: float, message: str) -> None:
        self.progress = (float(fraction), str(message))

    def _run(self) -> None:
        try:
            self.result = self._compute(self._report, self._cancelled.is_set)
        except BaseException as error:  # handed to the main thread, which reports it
            self.error = error
        finally:
            self._finished.set()
