"""``voxray`` command line. Flags are derived from the pydantic option models, never re-declared.

The composition root: one module per verb, listed in :data:`COMMANDS` in ``--help`` order, each
exposing ``register(subparsers)``. Nothing in voxray imports this package; a command module that
fails to import is an error (a broken install), never a silently missing verb.

Job commands (those that ``set_defaults(_console=True)``) run inside a :class:`Console`: a live
progress line on a terminal, Ray's internal noise kept off the console (it stays in Ray's log
files), and with ``--json`` nothing but the report's JSON on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from voxray.cli.options import add_options, collect_options, deep_merge, print_json
from voxray.errors import VoxrayError

__all__ = [
    "COMMANDS", "Console", "add_options", "build_parser", "collect_options", "deep_merge", "main", "print_json",
]

# verb modules under voxray.cli, in the order ``voxray --help`` lists them
COMMANDS = (
    "run", "models", "transcribe", "say", "voices", "synthesize", "embed", "embed_search", "serve", "audiobook",
    "finetune", "export", "listen",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxray", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", dest="_verbose", action="count", default=0, help="-v info, -vv debug logging"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"voxray.cli.{name}").register(sub)
    return parser


# ---------------------------------------------------------------- the console of a job command
def _noise_patterns() -> re.Pattern[str]:
    from voxray.cluster import RAY_NOISE

    extra = (
        r"A worker died or was killed while executing a task",
        r"Task \S+ failed\. There are \d+ retries remaining",
        r"The actor is temporarily unavailable",
        r"Exception ignored in atexit callback",  # Ray's own shutdown hooks racing ours
    )
    return re.compile("|".join(f"(?:{p})" for p in (*RAY_NOISE, *extra)))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Console:
    """Owns fd 1 and 2 while a job command runs.

    Everything written to them (Python, Ray's C++ core, worker lines Ray forwards) passes a filter
    that drops Ray's internal chatter (kept in Ray's session logs, plus ``voxray-console.log``
    there for the lines that exist only on the console) and forwards the rest to stderr. The
    command's result goes to the real stdout at the end: with ``--json`` only the JSON report, so
    stdout is machine-readable whatever Ray prints. The progress line is drawn on the real stderr.
    """

    def __init__(self, json_mode: bool = False, quiet: bool = False) -> None:
        self.json_mode, self.quiet = json_mode, quiet
        self.noise = _noise_patterns()
        self.dropped: list[str] = []
        self._lock = threading.Lock()
        self._line = ""
        self._last_draw = 0.0
        self._stop = threading.Event()
        self._result: str | None = None

    # -------------------------------------------------------- fds
    def __enter__(self) -> Console:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = os.dup(1), os.dup(2)
        self.tty = os.isatty(self._saved[1])
        self.err = os.fdopen(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._pump = threading.Thread(target=self._forward, args=(read,), name="voxray-console", daemon=True)
        self._pump.start()
        self._previous_term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)  # finally blocks run: committed work is flushed
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        self._stop.set()
        self._pump.join(timeout=2)
        self._clear()
        for fd in self._saved:
            os.close(fd)
        self.err.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_term or signal.SIG_DFL)
        self._keep_dropped()
        if self._result is not None:
            print(self._result, file=sys.stdout, flush=True)

    def _forward(self, fd: int) -> None:
        buf = b""
        idle = 0.0
        while True:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
                idle = 0.0
            else:
                idle += 0.1
                if self._stop.is_set():
                    break
            while True:  # complete segments (a line, or a carriage-return update)
                cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
                if cut < 0:
                    break
                self._emit(buf[: cut + 1].decode("utf-8", "replace"))
                buf = buf[cut + 1:]
            if buf and idle >= 0.2:  # a partial line with nothing after it (a prompt, a bar)
                self._emit(buf.decode("utf-8", "replace"))
                buf = b""
        if buf:
            self._emit(buf.decode("utf-8", "replace"))
        os.close(fd)

    def _emit(self, text: str) -> None:
        if text.strip() and self.noise.search(text):
            self.dropped.append(text.rstrip("\n"))
            return
        if self.quiet and not re.search(r"error|Error|Traceback", text):
            return
        with self._lock:
            if self._line:
                self.err.write("\r\033[K")
            self.err.write(text)
            if self._line and text.endswith("\n"):
                self.err.write(self._line)
            self.err.flush()

    def _clear(self) -> None:
        with self._lock:
            if self._line and self.tty:
                self.err.write("\n")
                self.err.flush()
            self._line = ""

    def _keep_dropped(self) -> None:
        """Ray's console-only lines, into the session's log folder (where Ray keeps its own)."""
        if not self.dropped:
            return
        from voxray.cluster import session_dir

        folder = session_dir()
        if folder and os.path.isdir(os.path.join(folder, "logs")):
            try:
                with open(os.path.join(folder, "logs", "voxray-console.log"), "a", encoding="utf-8") as fh:
                    fh.write("\n".join(self.dropped) + "\n")
            except OSError:
                pass

    # -------------------------------------------------------- progress and result
    def progress_fn(self, wanted: bool | None) -> Callable[[Any], None] | None:
        """The job's progress callback: on by default on a terminal, off with ``--quiet``."""
        on = (self.tty if wanted is None else wanted) and not self.quiet
        return self.show if on else None

    def show(self, p: Any) -> None:
        now = time.monotonic()
        if not p.finished and now - self._last_draw < (0.25 if self.tty else 10.0):
            return
        self._last_draw = now
        if p.status and not p.done:
            text = f"{p.job}: {p.status} ({_duration(p.elapsed_s)})"
        else:
            rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
            eta = f"ETA {_duration(p.eta_s)}" if p.eta_s is not None else "done" if p.finished else "ETA -"
            text = (f"{p.job}: {p.done:,}/{p.total:,} rows, {p.audio_s / 3600:.2f} h audio, {p.errors:,} errors, "
                    f"{rate:.1f} rows/s, {eta}")
        with self._lock:
            if self.tty:
                self._line = text
                self.err.write("\r\033[K" + text + ("\n" if p.finished else ""))
                if p.finished:
                    self._line = ""
            else:
                self.err.write(text + "\n")
            self.err.flush()

    def result(self, report: Any, summary: str) -> None:
        """The command's output, printed on stdout once the console is restored: the JSON report
        with ``--json``, else ``summary`` (human lines)."""
        import json

        self._result = json.dumps(report, indent=2, ensure_ascii=False, default=str) if self.json_mode else summary


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args._verbose == 0 else logging.INFO if args._verbose == 1 else logging.DEBUG
    quiet = getattr(args, "_quiet", False)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # job commands draw a progress line: their info messages need -v
    default = logging.WARNING if getattr(args, "_console", False) else logging.INFO
    logging.getLogger("voxray").setLevel(logging.ERROR if quiet else min(level, default))
    try:
        if getattr(args, "_console", False):
            with Console(json_mode=getattr(args, "_json", False), quiet=quiet) as console:
                args._console_obj = console
                return int(args._handler(args) or 0)
        return int(args._handler(args) or 0)
    except VoxrayError as exc:
        print(f"voxray: error: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # an option out of range or a typo in a YAML key
        lines = [f"  {'.'.join(map(str, e['loc']))} (--{str(e['loc'][-1]).replace('_', '-')}): {e['msg']}"
                 for e in exc.errors() if e["loc"]] or [f"  {exc}"]
        print("voxray: invalid options:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("voxray: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
