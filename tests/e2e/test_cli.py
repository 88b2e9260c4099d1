"""``tokenhub serve`` as a user runs it: a real process, stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, Reply, error_body, text_chunks

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "src" / "tokenhub" / "demo.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_tokenhub(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m tokenhub``; output goes to ``cwd/tokenhub.log`` (a full pipe would block it)."""
    with (cwd / "tokenhub.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tokenhub", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=log,
            text=True,
        )


def finish(process: subprocess.Popen[str], cwd: Path) -> tuple[int, str]:
    """Wait (bounded) for the process to exit; its exit code and output."""
    code = process.wait(30)
    return code, (cwd / "tokenhub.log").read_text()


@contextlib.contextmanager
def serving(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``tokenhub serve ARGS`` on a free port, once /healthz answers; killed by its handle if still up."""
    port = free_port()
    process = run_tokenhub("serve", "--port", str(port), *args, cwd=tmp_path, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tokenhub did not start: {(tmp_path / 'tokenhub.log').read_text()}")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.fixture
def served_demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with serving(tmp_path, "--config", str(DEMO)) as served:
        yield served


def test_serve_answers_with_the_demo_catalogue_and_stops_cleanly(
    served_demo: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, process = served_demo
    response = httpx.post(
        f"{url}/v1/chat/completions",
        timeout=20,
        json={"model": "demo-mini", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
    process.send_signal(signal.SIGTERM)
    code, logs = finish(process, tmp_path)
    assert code == 0  # a graceful shutdown is a clean exit
    assert "tokenhub_stopped" in logs
    # The default store is a SQLite file under ./data/ of the working directory.
    with sqlite3.connect(tmp_path / "data" / "tokenhub.db") as conn:
        assert conn.execute("SELECT model, status FROM request_logs").fetchall() == [("demo-mini", 200)]
    assert '"event":"request"' in logs  # the canonical line per request, in JSON
    assert "hello" not in logs  # prompt text is not logged


def test_no_provider_key_in_the_gateways_log_answers_or_database_even_when_the_upstream_echoes_it(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    fake, base_url = fake_openai
    key = "sk-cli-secret-0123456789abcdef"
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        f"providers:\n  - {{id: up, type: openai, base_url: '{base_url}', api_key_env: UP_KEY}}\n"
        "models:\n  - {id: m, provider_id: up}\n"
    )
    # As some upstreams do: the refusal quotes the key it refused.
    fake.push(Reply(status=401, body=error_body(f"Incorrect API key provided: {key}.", type_="auth")))
    fake.push(Reply(chunks=text_chunks(["fine"])))
    answers: list[str] = []
    env = {"UP_KEY": key, "TOKENHUB_LOG_LEVEL": "debug", "TOKENHUB_AUTH": "none"}
    with serving(tmp_path, "--config", str(catalog), env=env) as (url, process):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=20)
        assert refused.status_code == 502  # our credentials are not the client's to fix
        assert "Incorrect API key provided: [redacted]." in refused.json()["error"]["message"]
        answers.append(refused.text)
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=20
        ) as streamed:
            answers.append(streamed.read().decode())
        assert "fine" in answers[-1]
        process.send_signal(signal.SIGTERM)
        code, logs = finish(process, tmp_path)
    assert code == 0
    assert [h["authorization"] for h in fake.headers] == [f"Bearer {key}"] * 2  # the key was used
    assert "Incorrect API key provided: [redacted]." in logs  # the refusal was logged, with debug lines
    assert "DEBUG" in logs
    assert key not in logs
    assert not any(key in answer for answer in answers)
    for path in (tmp_path / "data").iterdir():  # the SQLite file and whatever WAL is left
        assert key.encode() not in path.read_bytes(), path.name


def test_a_bad_config_file_stops_start_up_with_one_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "providers:\n  - {id: a, type: openai, base_url: 'http://x'}\n"
        "models:\n  - {id: m, provider_id: a, input_per_1k: -1}\n"
    )
    code, stderr = finish(run_tokenhub("serve", "--config", str(bad), cwd=tmp_path), tmp_path)
    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(bad) in lines[0] and 'models[0] (id "m")' in lines[0] and "input_per_1k" in lines[0]


def test_a_bad_environment_variable_is_named(tmp_path: Path) -> None:
    process = run_tokenhub("serve", cwd=tmp_path, env={"TOKENHUB_LISTEN_ADDR": "nonsense"})
    code, stderr = finish(process, tmp_path)
    assert code == 2
    assert "TOKENHUB_LISTEN_ADDR" in stderr and "Traceback" not in stderr


def test_dev_runs_a_local_temporal_and_stops_it_on_exit(tmp_path: Path) -> None:
    """What `make run` does: a Temporal dev server, the gateway with the flag on, both gone on SIGTERM."""
    port, temporal_port = free_port(), free_port()
    process = run_tokenhub(
        "dev",  # no --config: dev serves the demo catalogue
        "--port",
        str(port),
        cwd=tmp_path,
        env={"TOKENHUB_TEMPORAL_HOST": f"127.0.0.1:{temporal_port}"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        dispatch = None
        while dispatch != "temporal":
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no Temporal dispatch: {(tmp_path / 'tokenhub.log').read_text()}")
            try:
                response = httpx.post(
                    f"{url}/v1/chat/completions",
                    timeout=20,
                    json={"model": "demo-mini", "messages": [{"role": "user", "content": "hi"}]},
                )
                dispatch = response.headers.get("x-tokenhub-dispatch")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        code, logs = finish(process, tmp_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert code == 0, logs
    assert (tmp_path / "data" / "temporal.db").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", temporal_port)) != 0, (
            "the Temporal dev server outlived tokenhub dev"
        )
