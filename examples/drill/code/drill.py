"""The fault drills' service: makes double execution and the served config observable.

``call({"id": ...})`` records the call's id before it answers: one line per execution in
``<ledger_dir>/calls-<pid>.log`` (one file per worker process, appended with a single
``write``), so a checker that reads every file finds an id that ran twice. ``served()``
answers with the config this instance runs (``seq`` grows with every config update the
drills' control client makes), so a checker can ask each cluster what it serves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

VERSION = "1"


class Drill:
    def __init__(self) -> None:
        self.seq: int | None = None
        self.ledger: Path | None = None

    def reconfigure(self, config: dict[str, object]) -> None:
        seq = config.get("seq")
        ledger_dir = config.get("ledger_dir")
        ledger = None
        if isinstance(ledger_dir, str) and ledger_dir:
            Path(ledger_dir).mkdir(parents=True, exist_ok=True)
            ledger = Path(ledger_dir) / f"calls-{os.getpid()}.log"
        # each attribute is replaced in one assignment: a call never sees no ledger
        self.ledger = ledger
        self.seq = int(seq) if isinstance(seq, (int, str)) else None

    def call(self, request: dict[str, object]) -> dict[str, object]:
        """Run once per call: record its id, hold it ``hold_s`` (default 0), answer."""
        call_id = str(request.get("id", ""))
        if self.ledger is not None and call_id:
            fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{call_id}\n".encode())
            finally:
                os.close(fd)
        hold = request.get("hold_s", 0)
        if isinstance(hold, (int, float)) and hold > 0:
            time.sleep(float(hold))
        return {"id": call_id, "seq": self.seq, "pid": os.getpid(), "version": VERSION}

    def served(self, _request: object = None) -> dict[str, object]:
        """The config this instance runs."""
        return {"seq": self.seq, "pid": os.getpid(), "version": VERSION}

    def check_health(self) -> bool:
        return True
