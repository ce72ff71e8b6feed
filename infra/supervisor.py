"""supervisord under every process of a local stack: restarts on crash, crash loops, log rotation.

One supervisord per profile runs from `<run_dir>/supervisor/` (its config, unix socket,
pid file and own log). `infra.stack` writes one program file per process of the stack
(Kafka, MinIO, FerretDB, each service and any extra instance) into `programs/`, and drives
supervisord over its XML-RPC socket, as `supervisorctl` does:

- a process that exits is started again at once; one that exits within `START_SECONDS`
  of its start is retried with a growing delay (1 s, 2 s, ...) `START_RETRIES` times,
  then left FATAL: a crash loop, which `make status` shows with supervisord's reason;
- each process's output goes to `<run_dir>/logs/<name>.log`, rotated at
  `LOG_MAX_BYTES` with `LOG_BACKUPS` old files kept;
- stopping sends SIGTERM to the process group, then SIGKILL after `stopwaitsecs`;
- `shutdown` stops every program, then supervisord itself: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

START_SECONDS: Final = 3
"""A process that exits sooner after starting counts as a failed start (a crash loop)."""
START_RETRIES: Final = 5
LOG_MAX_BYTES: Final = "20MB"
LOG_BACKUPS: Final = 3
RUNNING_STATES: Final = frozenset({"STARTING", "RUNNING"})


class SupervisorError(RuntimeError):
    """supervisord could not be started or reached."""


@dataclass(frozen=True)
class ProgramState:
    """What supervisord says of one program."""

    name: str
    state: str
    """STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL or UNKNOWN."""
    pid: int | None
    description: str
    """supervisord's words: `pid 123, uptime 0:01:02`, or why it is not running."""

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES and self.pid is not None

    @property
    def crash_looping(self) -> bool:
        """Exiting at every start: supervisord is backing off, or gave up."""
        return self.state in ("BACKOFF", "FATAL")


def _escape(value: str) -> str:
    """A value for supervisord's config, where `%` starts an expansion."""
    return value.replace("%", "%%")


LAUNCHER: Final = Path(__file__).resolve().parent / "launch.py"


def program_config(
    name: str,
    argv: list[str],
    env_file: Path,
    cwd: Path,
    log_file: Path,
    stop_wait_s: int,
    events: Sequence[str] = (),
) -> str:
    """The `[program:x]` section of one process: `infra/launch.py` execs `argv` with the
    environment saved in `env_file`.

    With `events` (supervisord's event types, e.g. PROCESS_STATE_EXITED) it is an
    `[eventlistener:x]` instead: supervisord writes those events to its standard input and
    reads the protocol's answers from its standard output, so only its standard error is
    logged.

    Raises:
        ValueError: An argument spans lines (a config line cannot hold it).
    """
    if any("\n" in part for part in argv):
        raise ValueError(f"{name}: a command line with a line break cannot be supervised")
    command = [sys.executable, str(LAUNCHER), str(env_file), "--", *argv]
    if events:
        section, stream = f"[eventlistener:{name}]", "stderr"
        output = [f"events={','.join(events)}"]
    else:
        section, stream = f"[program:{name}]", "stdout"
        output = ["redirect_stderr=true"]
    lines = [
        section,
        f"command={_escape(shlex.join(command))}",
        f"directory={_escape(str(cwd))}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={START_SECONDS}",
        f"startretries={START_RETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_wait_s}",
        "stopasgroup=true",
        "killasgroup=true",
        *output,
        f"{stream}_logfile={_escape(str(log_file))}",
        f"{stream}_logfile_maxbytes={LOG_MAX_BYTES}",
        f"{stream}_logfile_backups={LOG_BACKUPS}",
    ]
    return "\n".join(lines) + "\n"


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path

    def make_connection(self, host: Any) -> Any:
        import http.client

        path = self._path

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(30)
                self.sock.connect(str(path))

        return Connection("localhost")


class Supervisor:
    """The supervisord of one stack's run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.home = run_dir / "supervisor"
        self.config = self.home / "supervisord.conf"
        self.socket = self.home / "supervisor.sock"
        self.pid_file = self.home / "supervisord.pid"
        self.programs = self.home / "programs"

    def _rpc(self) -> Any:
        return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=_UnixTransport(self.socket)).supervisor

    def alive(self) -> bool:
        """Whether supervisord answers on its socket."""
        if not self.socket.exists():
            return False
        try:
            return bool(self._rpc().getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure_started(self) -> None:
        """Start supervisord (daemonized) unless it already runs.

        Raises:
            SupervisorError: it did not come up.
        """
        if self.alive():
            return
        self.programs.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    "[unix_http_server]",
                    f"file={_escape(str(self.socket))}",
                    "chmod=0700",
                    "",
                    "[supervisord]",
                    f"logfile={_escape(str(self.home / 'supervisord.log'))}",
                    f"logfile_maxbytes={LOG_MAX_BYTES}",
                    f"logfile_backups={LOG_BACKUPS}",
                    f"pidfile={_escape(str(self.pid_file))}",
                    f"directory={_escape(str(self.home))}",
                    "loglevel=info",
                    "",
                    "[rpcinterface:supervisor]",
                    "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                    "",
                    "[include]",
                    f"files={_escape(str(self.programs))}/*.conf",
                    "",
                ]
            )
        )
        # supervisord daemonizes: this returns once it forked into the background.
        subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config)], check=True)
        deadline = time.monotonic() + 15
        while not self.alive():
            if time.monotonic() > deadline:
                log = (
                    (self.home / "supervisord.log").read_text(errors="replace")[-2000:]
                    if (self.home / "supervisord.log").exists()
                    else ""
                )
                raise SupervisorError(f"supervisord did not start ({self.config}):\n{log}")
            time.sleep(0.1)

    def state(self, name: str) -> ProgramState | None:
        """A program's state; None when supervisord or the program is not there."""
        if not self.socket.exists():
            return None
        try:
            info = self._rpc().getProcessInfo(name)
        except (OSError, xmlrpc.client.Error):
            return None
        pid = int(info["pid"]) or None
        return ProgramState(name, str(info["statename"]), pid, str(info["description"]))

    def states(self) -> list[ProgramState]:
        """Every program supervisord knows (none when it is not running)."""
        if not self.socket.exists():
            return []
        try:
            infos = self._rpc().getAllProcessInfo()
        except (OSError, xmlrpc.client.Error):
            return []
        return [
            ProgramState(str(i["name"]), str(i["statename"]), int(i["pid"]) or None, str(i["description"]))
            for i in infos
        ]

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_file: Path,
        stop_wait_s: int = 20,
        events: Sequence[str] = (),
    ) -> int:
        """(Re)defines a program and starts it; returns its pid. With `events`, an event
        listener for those events (see `program_config`).

        Raises:
            SupervisorError: supervisord could not start it.
        """
        self.ensure_started()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        env_file = self.programs / f"{name}.env.json"
        # Read by infra/launch.py at every start of the process; it may hold secrets.
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(env, handle)
        (self.programs / f"{name}.conf").write_text(
            program_config(name, argv, env_file, cwd, log_file, stop_wait_s, events)
        )
        rpc = self._rpc()
        added, changed, _removed = rpc.reloadConfig()[0]
        if name in changed:
            with contextlib.suppress(xmlrpc.client.Fault):
                rpc.stopProcessGroup(name, True)
            rpc.removeProcessGroup(name)
            added.append(name)
        if name in added:
            rpc.addProcessGroup(name)  # autostart
        state = self.state(name)
        if state is None or not state.running:
            with contextlib.suppress(xmlrpc.client.Fault):  # ALREADY_STARTED
                rpc.startProcess(name, False)
        deadline = time.monotonic() + 10
        while True:
            state = self.state(name)
            if state is not None and state.pid is not None:
                return state.pid
            if time.monotonic() > deadline:
                raise SupervisorError(f"{name} did not start: {state.description if state else 'unknown program'}")
            time.sleep(0.05)

    def stop(self, name: str) -> bool:
        """Stops a program and keeps it stopped (SIGTERM to its group, then SIGKILL);
        True if it was running."""
        state = self.state(name)
        if state is None or state.state in ("STOPPED", "EXITED", "FATAL"):
            return False
        try:
            self._rpc().stopProcess(name, True)
        except xmlrpc.client.Fault:
            return False
        return True

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Stops supervisord (after its programs); True if it was running."""
        if not self.alive():
            self.socket.unlink(missing_ok=True)
            return False
        pid = int(self.pid_file.read_text().strip()) if self.pid_file.exists() else None
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self._rpc().shutdown()
        deadline = time.monotonic() + timeout_s
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.socket.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
