"""The supervisord under `make up`: a real supervisord in a temporary run folder, with tiny programs."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.supervisor import LOG_BACKUPS, Supervisor, _alive, program_config

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); [time.sleep(1) for _ in iter(int, 1)]"]


def until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    # A unix socket path must stay short: keep the folder near the root.
    run = Path("/tmp") / f"dr-sv-{os.getpid()}-{tmp_path.name[-6:]}"
    supervisor = Supervisor(run)
    try:
        yield supervisor
    finally:
        supervisor.shutdown()


def test_a_program_that_is_killed_is_started_again(supervisor: Supervisor, tmp_path: Path) -> None:
    pid = supervisor.start("sleeper", SLEEPER, {"GREETING": "50% off"}, tmp_path, tmp_path / "sleeper.log")
    state = supervisor.state("sleeper")
    assert state is not None and state.running and state.pid == pid
    until(lambda: "up" in (tmp_path / "sleeper.log").read_text(), "the first start logged")

    os.killpg(pid, signal.SIGKILL)
    until(lambda: (s := supervisor.state("sleeper")) is not None and s.running and s.pid != pid, "a new sleeper")
    until(lambda: (tmp_path / "sleeper.log").read_text().count("up") >= 2, "both starts logged")


def test_a_stopped_program_stays_stopped_and_starts_again_on_demand(supervisor: Supervisor, tmp_path: Path) -> None:
    pid = supervisor.start("sleeper", SLEEPER, {}, tmp_path, tmp_path / "sleeper.log")
    assert supervisor.stop("sleeper")
    time.sleep(1.5)
    state = supervisor.state("sleeper")
    assert state is not None and state.state == "STOPPED" and not _alive(pid)
    assert not supervisor.stop("sleeper")  # already stopped
    again = supervisor.start("sleeper", SLEEPER, {}, tmp_path, tmp_path / "sleeper.log")
    assert again != pid


def test_a_program_that_exits_at_every_start_is_a_visible_crash_loop(supervisor: Supervisor, tmp_path: Path) -> None:
    crasher = [sys.executable, "-c", "raise SystemExit('bad config')"]
    supervisor.start("crasher", crasher, {}, tmp_path, tmp_path / "crasher.log")
    until(lambda: (s := supervisor.state("crasher")) is not None and s.crash_looping, "the crash loop")
    assert "bad config" in (tmp_path / "crasher.log").read_text()


def test_shutdown_stops_every_program_and_supervisord(supervisor: Supervisor, tmp_path: Path) -> None:
    pids = [supervisor.start(name, SLEEPER, {}, tmp_path, tmp_path / f"{name}.log") for name in ("a", "b")]
    supervisord = int(supervisor.pid_file.read_text())
    assert supervisor.shutdown()
    assert not any(_alive(pid) for pid in [*pids, supervisord])
    assert supervisor.states() == [] and supervisor.state("a") is None


def test_program_files_rotate_logs_and_escape_what_supervisord_would_expand(tmp_path: Path) -> None:
    env_file = tmp_path / "svc.env.json"
    text = program_config("svc", ["python", "-c", "print('100%')"], env_file, tmp_path, tmp_path / "svc.log", 20)
    assert "autorestart=true" in text and f"stdout_logfile_backups={LOG_BACKUPS}" in text
    assert "100%%" in text and f"{env_file} -- python -c" in text
    assert "stopasgroup=true" in text and "killasgroup=true" in text
    with pytest.raises(ValueError, match="line break"):
        program_config("svc", ["python", "-c", "a\nb"], env_file, tmp_path, tmp_path / "svc.log", 20)


def test_a_program_gets_exactly_its_environment_whatever_the_values_hold(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    odd = {"MODELS": '["darkroom-mini", "amused-256"]', "URL": "file:x?_pragma=synchronous(normal)", "PCT": "100%, ok"}
    show = [
        sys.executable,
        "-c",
        "import json, os, time; print(json.dumps(dict(os.environ)), flush=True); time.sleep(60)",
    ]
    supervisor.start("env", show, odd, tmp_path, tmp_path / "env.log")
    until(lambda: "{" in (tmp_path / "env.log").read_text(), "the environment printed")
    printed = json.loads((tmp_path / "env.log").read_text().splitlines()[0])
    assert {k: printed[k] for k in odd} == odd


LISTENER = [
    sys.executable,
    "-c",
    "import sys; from infra.broker_watch import events; "
    "[print(name, fields.get('processname'), file=sys.stderr, flush=True) "
    "for name, fields in events(sys.stdin, sys.stdout)]",
]


def test_an_event_listener_hears_a_program_exit_and_logs_its_standard_error(
    supervisor: Supervisor, tmp_path: Path
) -> None:
    text = program_config("ear", LISTENER, tmp_path / "e.json", tmp_path, tmp_path / "ear.log", 20, ("PROCESS_STATE",))
    assert text.startswith("[eventlistener:ear]") and "events=PROCESS_STATE\n" in text
    assert "redirect_stderr" not in text and f"stderr_logfile={tmp_path / 'ear.log'}" in text

    supervisor.start(
        "ear",
        LISTENER,
        {"PYTHONPATH": str(Path.cwd())},
        Path.cwd(),
        tmp_path / "ear.log",
        events=("PROCESS_STATE_EXITED",),
    )
    pid = supervisor.start("sleeper", SLEEPER, {}, tmp_path, tmp_path / "sleeper.log")
    until(lambda: (s := supervisor.state("sleeper")) is not None and s.state == "RUNNING", "the sleeper running")
    os.killpg(pid, signal.SIGKILL)
    until(lambda: "PROCESS_STATE_EXITED sleeper" in (tmp_path / "ear.log").read_text(), "the exit heard")
