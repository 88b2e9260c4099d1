"""The providers/models file: what loads, and the one clear message every bad file gets."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tokenhub.config import ConfigError, SimulatedOptions, load_catalog
from tokenhub.engine.live_catalog import model_row, model_spec

SIM_PROVIDER = """\
providers:
  - id: sim
    type: simulated
"""


def write_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_catalog(path, environ if environ is not None else {})
    return info.value


def assert_operator_message(error: ConfigError, *fragments: str) -> None:
    """One line, naming the file, with every fragment; no pydantic wording or chained traceback."""
    message = str(error)
    assert "catalog.yaml" in message
    assert "\n" not in message
    assert "pydantic" not in message.lower()
    assert "validation error" not in message.lower()
    assert "Value error," not in message
    # No chained exception: the operator never sees a pydantic or YAML traceback underneath.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_valid_file_loads_providers_models_and_keys(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        """\
        providers:
          - id: sim
            type: simulated
            options: {ttft_ms: 5, fail_rate: 0.25, fail_kind: timeout, seed: 7}
          - id: vllm
            type: openai
            base_url: http://127.0.0.1:8000/v1
            api_key_env: VLLM_KEY
        models:
          - id: small
            provider_id: sim
            weight: 3
            input_per_1k: 0.001
            output_per_1k: 0.002
          - id: big
            provider_id: vllm
            upstream_model: meta/llama-70b
            max_context_tokens: 131072
        """,
    )

    catalog = load_catalog(path, {"VLLM_KEY": "secret-value"})

    assert [p.id for p in catalog.providers] == ["sim", "vllm"]
    assert [m.id for m in catalog.models] == ["small", "big"]
    options = catalog.providers[0].options
    assert isinstance(options, SimulatedOptions)
    assert (options.ttft_ms, options.fail_rate, options.fail_kind, options.seed) == (5, 0.25, "timeout", 7)
    assert catalog.models[0].weight == 3
    assert catalog.models[0].input_per_1k == 0.001
    assert catalog.models[1].upstream_model == "meta/llama-70b"
    assert catalog.models[1].max_context_tokens == 131072
    assert catalog.providers[1].api_key_env == "VLLM_KEY"


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.example.com",
        "https://api.example.com/",
        "https://api.example.com/v1",
        "https://api.example.com/v1/",
    ],
)
def test_base_url_with_or_without_v1_and_slash_normalises_the_same(tmp_path: Path, base_url: str) -> None:
    path = write_catalog(tmp_path, f"providers:\n  - id: up\n    type: openai\n    base_url: {base_url}\n")

    catalog = load_catalog(path, {})

    assert catalog.providers[0].base_url == "https://api.example.com"


def test_base_url_keeps_a_path_prefix_before_v1(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path, "providers:\n  - id: up\n    type: openai\n    base_url: http://proxy:8080/openai/v1/\n"
    )

    assert load_catalog(path, {}).providers[0].base_url == "http://proxy:8080/openai"


@pytest.mark.parametrize("base_url", ["http://h:99999", "http://h:port/v1", "https://:8080"])
def test_a_base_url_without_a_usable_host_and_port_is_refused(tmp_path: Path, base_url: str) -> None:
    path = write_catalog(tmp_path, f"providers:\n  - id: up\n    type: openai\n    base_url: '{base_url}'\n")

    assert_operator_message(load_error(path), "providers[0]", "base_url", "http:// or https:// URL with a")


def test_upstream_model_is_left_unset_in_the_file_and_defaults_to_the_id_in_the_registry(
    tmp_path: Path,
) -> None:
    path = write_catalog(tmp_path, SIM_PROVIDER + "models:\n  - id: demo-mini\n    provider_id: sim\n")

    catalog = load_catalog(path, {})

    assert catalog.models[0].upstream_model is None
    spec = model_spec(model_row(catalog.models[0], datetime.now(UTC)))
    assert spec.upstream_model == "demo-mini"


def test_api_key_is_read_from_the_environ_argument_not_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UP_KEY", "from-process-env")
    path = write_catalog(
        tmp_path,
        "providers:\n  - id: up\n    type: openai\n    base_url: http://h\n    api_key_env: UP_KEY\n",
    )

    load_catalog(path, {"UP_KEY": "from-argument"})  # set in the given environment: fine
    error = load_error(path, {})
    assert_operator_message(error, 'providers[0] (id "up")', "api_key_env", "UP_KEY", "not set")


def test_an_empty_file_is_an_empty_catalog(tmp_path: Path) -> None:
    catalog = load_catalog(write_catalog(tmp_path, ""), {})

    assert (catalog.providers, catalog.models) == ((), ())


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            SIM_PROVIDER + "  - id: az\n    type: azure\n    base_url: http://h\n",
            ['providers[1] (id "az")', "type:", "'openai'", "'anthropic'", "'simulated'"],
            id="unknown-provider-type",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: nope\n",
            ['models[0] (id "m1")', "provider_id", '"nope"', "providers: sim"],
            id="model-points-at-a-missing-provider",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: sim\n    input_per_1k: -0.5\n",
            ['models[0] (id "m1")', "input_per_1k", "greater than or equal to 0"],
            id="negative-input-price",
        ),
        pytest.param(
            SIM_PROVIDER
            + "models:\n  - id: ok\n    provider_id: sim\n  - id: m2\n    provider_id: sim\n"
            + "    output_per_1k: -1\n",
            ['models[1] (id "m2")', "output_per_1k", "greater than or equal to 0"],
            id="negative-output-price",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: sim\n    weight: 10.5\n",
            ['models[0] (id "m1")', "weight", "less than or equal to 10"],
            id="weight-above-10",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: sim\n    weight: -1\n",
            ['models[0] (id "m1")', "weight", "greater than or equal to 0"],
            id="weight-below-0",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: sim\n    type: simulated\n",
            ['providers[1] (id "sim")', "id:", "duplicate of providers[0]"],
            id="duplicate-provider-id",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: sim\n  - id: m1\n    provider_id: sim\n",
            ['models[1] (id "m1")', "id:", "duplicate of models[0]"],
            id="duplicate-model-id",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: oa\n    type: openai\n    base_url: http://h\n    colour: red\n",
            ['providers[1] (id "oa")', "colour", "unknown field"],
            id="unknown-provider-field",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: m1\n    provider_id: sim\n    wieght: 3\n",
            ['models[0] (id "m1")', "wieght", "unknown field"],
            id="unknown-model-field",
        ),
        pytest.param(
            "providers: []\nmodel: []\n",
            ["model", "unknown top-level key"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: flaky\n    type: simulated\n    options: {fail_rate: 2}\n",
            ['providers[1] (id "flaky")', "options.fail_rate", "less than or equal to 1"],
            id="simulated-fail-rate-above-1",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: flaky\n    type: simulated\n    options: {fail_kind: explode}\n",
            ['providers[1] (id "flaky")', "options.fail_kind", "'transient'"],
            id="simulated-unknown-fail-kind",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: flaky\n    type: simulated\n    options: {max_connections: 4}\n",
            ['providers[1] (id "flaky")', "options.max_connections"],
            id="http-option-on-a-simulated-provider",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: oa\n    type: openai\n",
            ['providers[1] (id "oa")', "base_url", "required", "openai"],
            id="openai-provider-without-base-url",
        ),
        pytest.param(
            SIM_PROVIDER + "  - id: oa\n    type: openai\n    base_url: ftp://h\n",
            ['providers[1] (id "oa")', "base_url", "http"],
            id="base-url-not-http",
        ),
        pytest.param(
            SIM_PROVIDER + "models:\n  - id: auto\n    provider_id: sim\n",
            ['models[0] (id "auto")', "id:", "reserved"],
            id="model-id-auto-is-reserved",
        ),
    ],
)
def test_a_bad_file_gets_one_message_naming_file_entry_and_field(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    error = load_error(write_catalog(tmp_path, text))

    assert_operator_message(error, *fragments)


def test_an_api_key_literal_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        SIM_PROVIDER + "  - id: oa\n    type: openai\n    base_url: http://h\n    api_key: sk-live-123456\n",
    )

    error = load_error(path)

    assert_operator_message(error, 'providers[1] (id "oa")', "api_key", "api_key_env")
    assert "sk-live-123456" not in str(error)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        "providers:\n  - id: oa\n    type: openai\n    base_url: http://h\n    api_key_env: sk-live-123456\n",
    )

    error = load_error(path, {"sk-live-123456": "x"})

    assert_operator_message(error, 'providers[0] (id "oa")', "api_key_env", "environment variable")
    assert "sk-live-123456" not in str(error)


def test_api_key_env_naming_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path, "providers:\n  - id: oa\n    type: openai\n    base_url: http://h\n    api_key_env: K\n"
    )

    assert_operator_message(load_error(path, {"K": ""}), 'providers[0] (id "oa")', "api_key_env", "K")


def test_a_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    # Line 3 is indented by three spaces where "type" must align with "id" (four).
    path = write_catalog(tmp_path, "providers:\n  - id: sim\n   type: simulated\n")

    error = load_error(path)

    assert_operator_message(error, "YAML error", "line 3", "column")


def test_a_file_holding_a_list_instead_of_a_mapping_is_refused(tmp_path: Path) -> None:
    path = write_catalog(tmp_path, "- id: sim\n  type: simulated\n")

    assert_operator_message(load_error(path), "mapping", "providers", "models")


def test_a_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"

    error = load_error(path)

    assert str(path) in str(error)
    assert "cannot read" in str(error)


def test_only_the_first_problem_is_reported(tmp_path: Path) -> None:
    path = write_catalog(
        tmp_path,
        SIM_PROVIDER
        + "models:\n  - id: m1\n    provider_id: sim\n    weight: 99\n"
        + "  - id: m2\n    provider_id: sim\n    input_per_1k: -1\n",
    )

    message = str(load_error(path))

    assert "models[0]" in message
    assert "models[1]" not in message
