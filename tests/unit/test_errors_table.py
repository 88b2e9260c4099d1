"""From engine error to the status, headers and OpenAI error body a client sees."""

from __future__ import annotations

import orjson
import pytest

from tokenhub.engine import (
    InvalidRequest,
    ModelNotFound,
    NoEligibleModel,
    RoutingFailed,
    UpstreamError,
)
from tokenhub.engine.errors import ErrorClass, IneligibleReason
from tokenhub.gateway import BodyTooLarge, ErrorReply, reply_for, status_of


def headers_of(reply: ErrorReply) -> dict[str, str]:
    pairs = reply.header_list()
    headers = {k.decode(): v.decode() for k, v in pairs}
    assert len(headers) == len(pairs), "a header was sent twice"
    return headers


def body_of(reply: ErrorReply) -> dict[str, object]:
    body = orjson.loads(reply.body_bytes())
    assert isinstance(body, dict)
    assert list(body) == ["error"]
    error = body["error"]
    assert isinstance(error, dict)
    assert sorted(error) == ["code", "message", "param", "type"]
    return error


def upstream(
    error_class: ErrorClass,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    model_id: str = "m",
    message: str = "upstream said no",
) -> UpstreamError:
    return UpstreamError(
        error_class,
        message,
        provider_id=f"p-{model_id}",
        model_id=model_id,
        status=status,
        retry_after=retry_after,
    )


# --- request errors --------------------------------------------------------------------------------


def test_invalid_request_is_a_400_naming_the_param() -> None:
    reply = reply_for(
        InvalidRequest("Invalid value for 'temperature'.", param="temperature", code="invalid_value")
    )

    assert reply.status == 400
    assert body_of(reply) == {
        "message": "Invalid value for 'temperature'.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }


def test_model_not_found_is_a_404_model_not_found_on_param_model() -> None:
    reply = reply_for(ModelNotFound("gpt-9"))

    assert reply.status == 404
    error = body_of(reply)
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert "gpt-9" in str(error["message"])


def test_a_body_too_large_is_a_413() -> None:
    reply = reply_for(BodyTooLarge(1024))

    assert reply.status == 413
    assert body_of(reply)["code"] == "request_too_large"
    assert "1024" in str(body_of(reply)["message"])


# --- no eligible model -----------------------------------------------------------------------------


def test_no_healthy_model_is_a_503_with_retry_after_when_known() -> None:
    reply = reply_for(NoEligibleModel({"a": "unhealthy", "b": "unhealthy"}, retry_after=2.5))

    headers = headers_of(reply)
    assert reply.status == 503
    assert (body_of(reply)["type"], body_of(reply)["code"]) == ("server_error", "no_healthy_provider")
    assert headers["retry-after"] == "3"
    assert headers["retry-after-ms"] == "2500"
    assert "x-should-retry" not in headers


def test_no_healthy_model_without_a_known_wait_has_no_retry_after() -> None:
    reply = reply_for(NoEligibleModel({"a": "unhealthy"}))

    assert reply.status == 503
    assert "retry-after" not in headers_of(reply)


def test_a_prompt_too_long_for_every_model_is_a_400_context_length_exceeded() -> None:
    reply = reply_for(NoEligibleModel({"a": "context_window", "b": "context_window"}))

    error = body_of(reply)
    assert reply.status == 400
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
    assert headers_of(reply)["x-should-retry"] == "false"


def test_some_models_too_small_and_others_unhealthy_is_a_503() -> None:
    # The unhealthy model could take the request once it recovers: worth retrying.
    reply = reply_for(NoEligibleModel({"a": "context_window", "b": "unhealthy"}, retry_after=4))

    assert reply.status == 503
    assert headers_of(reply)["retry-after"] == "4"


def test_every_model_over_budget_is_a_400_budget_exceeded() -> None:
    reply = reply_for(NoEligibleModel({"a": "budget"}))

    assert reply.status == 400
    assert body_of(reply)["code"] == "budget_exceeded"


def test_every_model_too_light_is_a_400() -> None:
    reply = reply_for(NoEligibleModel({"a": "min_weight", "b": "context_window"}))

    assert reply.status == 400
    assert headers_of(reply)["x-should-retry"] == "false"


@pytest.mark.parametrize(
    "reasons",
    [
        {"small": "context_window", "large": "budget"},
        {"light": "min_weight", "dear": "budget"},
        {"small": "context_window", "light": "min_weight", "dear": "budget"},
    ],
    ids=["context+budget", "min_weight+budget", "all-three"],
)
def test_only_permanent_reasons_are_a_client_error_not_a_retryable_503(
    reasons: dict[str, IneligibleReason],
) -> None:
    # No model is unhealthy: retrying the same request can never succeed, so it must not be a 5xx
    # (the openai SDK retries 5xx) nor claim "no_healthy_provider".
    reply = reply_for(NoEligibleModel(reasons))

    assert reply.status == 400
    assert body_of(reply)["type"] == "invalid_request_error"
    assert headers_of(reply)["x-should-retry"] == "false"


# --- routing failed --------------------------------------------------------------------------------


def test_every_attempt_rate_limited_is_a_429_with_the_shortest_wait_rounded_up() -> None:
    exc = RoutingFailed(
        [
            upstream("rate_limited", status=429, retry_after=4.0, model_id="a"),
            upstream("rate_limited", status=429, retry_after=1.2, model_id="b"),
        ]
    )

    reply = reply_for(exc)

    headers = headers_of(reply)
    assert reply.status == 429
    assert (body_of(reply)["type"], body_of(reply)["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert headers["retry-after"] == "2"  # 1.2 s, in whole seconds, rounded up
    assert headers["retry-after-ms"] == "1200"
    assert "x-should-retry" not in headers  # a 429 is meant to be retried


def test_every_attempt_rate_limited_without_a_wait_still_says_when_to_retry() -> None:
    reply = reply_for(RoutingFailed([upstream("rate_limited", status=429)]))

    assert reply.status == 429
    assert headers_of(reply)["retry-after"] == "1"


def test_a_sub_second_retry_after_is_at_least_one_second() -> None:
    reply = reply_for(RoutingFailed([upstream("rate_limited", status=429, retry_after=0.2)]))

    assert headers_of(reply)["retry-after"] == "1"
    assert headers_of(reply)["retry-after-ms"] == "200"


def test_routing_that_ends_in_a_timeout_is_a_504() -> None:
    reply = reply_for(RoutingFailed([upstream("transient", status=502, model_id="a"), upstream("timeout")]))

    assert reply.status == 504
    assert (body_of(reply)["type"], body_of(reply)["code"]) == ("server_error", "upstream_timeout")


def test_routing_that_ends_in_a_transient_error_is_a_502() -> None:
    reply = reply_for(
        RoutingFailed([upstream("rate_limited", status=429, model_id="a"), upstream("transient")])
    )

    assert reply.status == 502
    assert (body_of(reply)["type"], body_of(reply)["code"]) == ("server_error", "upstream_error")
    assert "retry-after" not in headers_of(reply)


def test_every_upstream_refusing_the_request_with_400_is_the_clients_400() -> None:
    exc = RoutingFailed(
        [
            upstream("fatal", status=400, model_id="a", message="bad tool schema"),
            upstream("fatal", status=422, model_id="b", message="unknown field 'foo'"),
        ]
    )

    reply = reply_for(exc)

    assert exc.client_fault
    assert reply.status == 400
    error = body_of(reply)
    assert error["type"] == "invalid_request_error"
    assert "unknown field 'foo'" in str(error["message"])  # the last upstream's words
    assert headers_of(reply)["x-should-retry"] == "false"


def test_one_upstream_400_among_server_errors_is_not_the_clients_fault() -> None:
    exc = RoutingFailed([upstream("fatal", status=400, model_id="a"), upstream("transient", status=500)])

    assert not exc.client_fault
    assert reply_for(exc).status == 502


def test_routing_ending_in_context_overflow_is_a_400_context_length_exceeded() -> None:
    reply = reply_for(RoutingFailed([upstream("context_overflow", status=400)]))

    assert reply.status == 400
    assert body_of(reply)["code"] == "context_length_exceeded"


def test_an_upstream_auth_failure_is_the_gateways_502_not_the_clients_401() -> None:
    reply = reply_for(RoutingFailed([upstream("fatal", status=401)]))

    assert reply.status == 502


@pytest.mark.parametrize(
    ("error_class", "status"),
    [("rate_limited", 429), ("timeout", 504), ("transient", 502), ("context_overflow", 400), ("fatal", 502)],
)
def test_a_single_upstream_error_maps_by_its_class(error_class: ErrorClass, status: int) -> None:
    assert status_of(upstream(error_class)) == status


# --- engine error summaries ------------------------------------------------------------------------


def test_routing_failed_is_rate_limited_only_when_every_attempt_was() -> None:
    all_limited = RoutingFailed([upstream("rate_limited"), upstream("rate_limited")])
    ends_in_timeout = RoutingFailed([upstream("rate_limited"), upstream("timeout")])

    assert all_limited.error_class == "rate_limited"
    assert ends_in_timeout.error_class == "timeout"
    assert ends_in_timeout.last.error_class == "timeout"


def test_routing_failed_names_every_model_tried() -> None:
    exc = RoutingFailed([upstream("transient", model_id="alpha"), upstream("timeout", model_id="beta")])

    assert "alpha" in exc.message
    assert "beta" in exc.message


def test_routing_failed_needs_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        RoutingFailed([])


def test_no_eligible_model_lists_each_model_and_why() -> None:
    exc = NoEligibleModel({"b": "budget", "a": "context_window"})

    assert exc.kinds == ["budget", "context_window"]
    assert "a: context_window" in exc.message
    assert "b: budget" in exc.message


def test_an_upstream_error_reads_provider_model_class_and_message() -> None:
    exc = UpstreamError("timeout", "no first token within 5s", provider_id="p", model_id="m")

    assert str(exc) == "p/m: timeout: no first token within 5s"


# --- headers and unknown errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        InvalidRequest("bad", param="x"),
        ModelNotFound("nope"),
        BodyTooLarge(10),
        NoEligibleModel({"a": "context_window"}),
        NoEligibleModel({"a": "budget"}),
    ],
    ids=["400-invalid", "404-not-found", "413-too-large", "400-context", "400-budget"],
)
def test_client_errors_tell_clients_not_to_retry(exc: Exception) -> None:
    reply = reply_for(exc)

    assert 400 <= reply.status < 500
    assert headers_of(reply)["x-should-retry"] == "false"


@pytest.mark.parametrize(
    "exc",
    [
        RoutingFailed([upstream("rate_limited", status=429)]),
        RoutingFailed([upstream("transient", status=503)]),
        RoutingFailed([upstream("timeout")]),
        NoEligibleModel({"a": "unhealthy"}),
    ],
    ids=["429", "502", "504", "503"],
)
def test_retryable_errors_do_not_forbid_retries(exc: Exception) -> None:
    assert "x-should-retry" not in headers_of(reply_for(exc))


def test_every_reply_is_json() -> None:
    assert headers_of(reply_for(ModelNotFound("x")))["content-type"] == "application/json"


def test_an_unknown_exception_is_an_opaque_500() -> None:
    exc = RuntimeError("connection to postgresql://admin:hunter2@db/prod failed at store/sql.py:42")

    reply = reply_for(exc)

    assert reply.status == 500
    error = body_of(reply)
    assert error["type"] == "server_error"
    assert error["param"] is None
    for leak in ("hunter2", "postgresql", "sql.py", "RuntimeError"):
        assert leak not in str(error["message"])
    assert "x-should-retry" not in headers_of(reply)


def test_a_subclass_of_an_engine_error_maps_like_its_parent() -> None:
    class EmptyMessages(InvalidRequest):
        pass

    reply = reply_for(EmptyMessages("no messages", param="messages"))

    assert reply.status == 400
    assert body_of(reply)["param"] == "messages"
