"""A local Ray head on 127.0.0.1 for the cluster-path tests (Ray 2.60): `ray start --head --block` in a process group
of its own, so stopping it ends this cluster only (`ray stop` would end every Ray process of the user)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
#: For the head and for the clients that talk to it.
RAY_ENV = {
    # A new local cluster writes ~/.ray/auth_token and later `ray start`s turn token auth on when it exists.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # a noisy error line per Ray Train run otherwise
    "RAY_COLOR_PREFIX": "0",  # no ANSI codes in the "(RayTrainWorker ...)" prefixes of job logs
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM would first drain the node for up to 30 s
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                json.load(response)
                return
        except urllib.error.HTTPError:  # answering at all means the dashboard is up
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def local_ray_head(temp_dir: Path, num_cpus: int = 2, log_path: Path | None = None) -> Iterator[dict]:
    """Start a head with `num_cpus` CPUs and no GPU; yields {"address": dashboard URL, "start_s", ...}.

    `temp_dir` must be short: Ray's Unix sockets live under it (about 107 characters at most).
    """
    dashboard = _free_port()
    env = {**os.environ, **RAY_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(_free_port()),
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    started = time.monotonic()
    with open(log_path or os.devnull, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        info = {"address": f"http://127.0.0.1:{dashboard}", "pid": proc.pid}
        try:
            _wait_for(f"{info['address']}/api/version", proc, timeout=180)
            info["start_s"] = time.monotonic() - started
            yield info
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the leader stops its GCS, raylet and dashboard
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of this cluster only
