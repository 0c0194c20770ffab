"""Test hook: SIGKILL the process at a named phase of a checkpoint save (off unless the variable is set).

``LLAVA_TEST_KILL_AT=<phase>@<step>`` (e.g. ``optimizer@4``) kills the process with SIGKILL when the save
of ``checkpoint-<step>`` reaches ``<phase>``, one of :data:`PHASES`: after the model files (``model``),
after optimizer + scheduler (``optimizer``), after ``trainer_state.json`` (``trainer_state``), with the
manifest's temp file written but not renamed (``manifest``), after an old checkpoint was renamed for
deletion (``rotation``). It is read at save time from the environment (no global state); the
kill-in-every-phase test uses it to prove that no moment of a save loses progress.
"""

from __future__ import annotations

import os
import signal

ENV = "LLAVA_TEST_KILL_AT"
PHASES = ("model", "optimizer", "trainer_state", "manifest", "rotation")


def stop_if_asked(phase: str, step: int) -> None:
    """SIGKILL this process if ``$LLAVA_TEST_KILL_AT`` is ``<phase>@<step>``; otherwise do nothing."""
    if os.environ.get(ENV) == f"{phase}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)
