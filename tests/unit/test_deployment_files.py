"""compose.yaml and the Dockerfile, checked against the settings they configure.

Docker cannot run on this machine kind, so the files are validated by structure: the services exist, every
TOKENHUB_* variable is a real setting with a valid value, and ports and addresses agree with each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tokenhub.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def settings_from(environment: dict[str, str]) -> Settings:
    fields = {}
    for name, value in environment.items():
        assert name.startswith("TOKENHUB_"), name
        field = name.removeprefix("TOKENHUB_").lower()
        assert field in Settings.model_fields, f"{name} is not a TokenHub setting"
        fields[field] = value
    return Settings.model_validate(fields)


def test_the_services_are_there() -> None:
    services = compose()["services"]
    assert set(services) == {"postgresql", "temporal", "temporal-ui", "gateway", "worker"}
    assert services["gateway"]["command"] == ["serve"]
    assert services["worker"]["command"] == ["worker"]


def test_gateway_and_worker_settings_are_valid_and_agree_with_temporal() -> None:
    services = compose()["services"]
    gateway_env = {k: v for k, v in services["gateway"]["environment"].items() if k != "TOKENHUB_ADMIN_TOKEN"}
    gateway = settings_from({**gateway_env, "TOKENHUB_ADMIN_TOKEN": "x" * 16})
    worker = settings_from(services["worker"]["environment"])
    temporal = services["temporal"]
    assert gateway.temporal_enabled and not gateway.temporal_worker
    for side in (gateway, worker):
        host, _, port = side.temporal_host.partition(":")
        assert host == "temporal" and f"{port}:{port}" in temporal["ports"]
        assert side.temporal_namespace == temporal["environment"]["DEFAULT_NAMESPACE"]
        assert side.async_db_url.startswith("postgresql+asyncpg://")
        assert "@postgresql:5432/" + services["postgresql"]["environment"]["POSTGRES_DB"] in side.db_url
    assert gateway.temporal_task_queue == worker.temporal_task_queue
    assert f"{gateway.port}:{gateway.port}" in services["gateway"]["ports"]
    assert "8233:8080" in services["temporal-ui"]["ports"]
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == gateway.temporal_host


def test_the_image_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert sum(line.startswith("FROM ") for line in lines) == 2
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["tokenhub"]' in lines
    assert any("[postgres]" in line for line in lines)  # PostgreSQL's async driver is in the image
