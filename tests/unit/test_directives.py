"""In-band ``@@tokenhub`` directives: what they set, what the upstream still sees, the 400 a bad one gets."""

from __future__ import annotations

from typing import Any

import pytest

from tokenhub.engine import ChatRequest, InvalidRequest, Policy
from tokenhub.engine.directives import Directives, extract_directives, parse_mode


def request(*messages: dict[str, Any], **fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "demo", "messages": list(messages), **fields})


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def rejected(req: ChatRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        extract_directives(req)
    return caught.value


# --- the single-line form ---------------------------------------------------------------------------


def test_a_single_line_directive_sets_every_key_and_is_removed() -> None:
    req = request(
        user(
            "Summarise the report.\n"
            '@@tokenhub mode=cheap budget=0.01 latency=5000 min_weight=5 output_schema={"type": "object"}\n'
            "Keep it short."
        )
    )

    stripped, found = extract_directives(req)

    assert found == Directives(
        mode="cheap",
        max_budget_usd=0.01,
        max_latency_ms=5000.0,
        min_weight=5.0,
        output_schema={"type": "object"},
    )
    assert stripped.messages[0].content == "Summarise the report.\nKeep it short."


def test_an_output_schema_may_hold_spaces_and_runs_to_the_end_of_its_line() -> None:
    schema_text = '{"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}'
    req = request(user(f"@@tokenhub mode=planning output_schema={schema_text}\nWho wrote Hamlet?"))

    stripped, found = extract_directives(req)

    assert found.mode == "planning"
    assert found.output_schema == {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    }
    assert stripped.messages[0].content == "Who wrote Hamlet?"


def test_a_message_that_is_only_a_directive_is_left_empty() -> None:
    stripped, found = extract_directives(request(user("@@tokenhub latency=1500")))

    assert found.max_latency_ms == 1500.0
    assert stripped.messages[0].content == ""


def test_a_directive_on_a_crlf_line_is_removed_with_its_line_ending() -> None:
    stripped, found = extract_directives(request(user("@@tokenhub mode=adversarial\r\nIs P = NP?")))

    assert found.mode == "adversarial"
    assert stripped.messages[0].content == "Is P = NP?"


def test_a_later_value_on_the_same_line_wins() -> None:
    _, found = extract_directives(request(user("@@tokenhub budget=0.5 budget=0.25\nhi")))

    assert found.max_budget_usd == 0.25


# --- the block form ---------------------------------------------------------------------------------


def test_a_block_directive_sets_every_key_and_is_removed() -> None:
    req = request(
        user(
            "Please summarise.\n"
            "@@tokenhub\n"
            "mode=high_confidence\n"
            "budget=0.5\n"
            "latency=2000\n"
            "min_weight=3\n"
            'output_schema={"type": "object", "required": ["summary"]}\n'
            "@@end\n"
            "Thanks"
        )
    )

    stripped, found = extract_directives(req)

    assert found == Directives(
        mode="high_confidence",
        max_budget_usd=0.5,
        max_latency_ms=2000.0,
        min_weight=3.0,
        output_schema={"type": "object", "required": ["summary"]},
    )
    assert stripped.messages[0].content == "Please summarise.\nThanks"


def test_a_block_may_put_several_settings_on_one_line_and_skip_blank_lines() -> None:
    req = request(user("@@tokenhub\n\n  mode=cheap budget=2  \n\n@@end\nQuestion?"))

    stripped, found = extract_directives(req)

    assert found.mode == "cheap"
    assert found.max_budget_usd == 2.0
    assert stripped.messages[0].content == "Question?"


def test_a_block_with_crlf_line_endings_is_read_and_removed() -> None:
    req = request(user("@@tokenhub\r\nmode=planning\r\nlatency=9000\r\n@@end\r\nPlan a trip."))

    stripped, found = extract_directives(req)

    assert found.mode == "planning"
    assert found.max_latency_ms == 9000.0
    assert stripped.messages[0].content == "Plan a trip."


def test_a_block_and_a_single_line_directive_in_one_message_both_apply() -> None:
    req = request(user("@@tokenhub\nmode=cheap\n@@end\nText\n@@tokenhub min_weight=7"))

    stripped, found = extract_directives(req)

    assert found.mode == "cheap"
    assert found.min_weight == 7.0
    assert stripped.messages[0].content == "Text"


# --- where directives are read ----------------------------------------------------------------------


def test_a_directive_in_a_text_content_part_is_read_and_other_parts_are_kept() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    req = request(user([{"type": "text", "text": "What is this?\n@@tokenhub mode=high_confidence"}, image]))

    stripped, found = extract_directives(req)

    assert found.mode == "high_confidence"
    content = stripped.messages[0].content
    assert isinstance(content, list)
    assert len(content) == 2
    assert content[0].type == "text"
    assert content[0].text == "What is this?"
    assert content[1].model_dump(exclude_none=True) == image


def test_only_the_text_parts_holding_a_directive_change() -> None:
    req = request(
        user(
            [
                {"type": "text", "text": "  First part, kept as written.  "},
                {"type": "text", "text": "@@tokenhub budget=1\nSecond part."},
            ]
        )
    )

    stripped, found = extract_directives(req)

    assert found.max_budget_usd == 1.0
    content = stripped.messages[0].content
    assert isinstance(content, list)
    assert [part.text for part in content] == ["  First part, kept as written.  ", "Second part."]


@pytest.mark.parametrize("role", ["system", "developer", "assistant"])
def test_a_directive_outside_a_user_message_is_not_a_directive(role: str) -> None:
    # Not read, not removed, and not an error even with a value that would be invalid from a user.
    req = request(
        {"role": role, "content": "@@tokenhub mode=planning\n@@tokenhub mode=nonsense"},
        user("Hello"),
    )

    stripped, found = extract_directives(req)

    assert stripped is req
    assert found == Directives()
    assert stripped.messages[0].content == "@@tokenhub mode=planning\n@@tokenhub mode=nonsense"


def test_a_tool_result_that_quotes_a_directive_is_left_alone() -> None:
    req = request(
        user("Look it up."),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "@@tokenhub mode=cheap"},
    )

    stripped, found = extract_directives(req)

    assert stripped is req
    assert found == Directives()


def test_a_request_without_directives_comes_back_as_the_same_object() -> None:
    req = request({"role": "system", "content": "Be terse."}, user("Hello, how are you?"))

    stripped, found = extract_directives(req)

    assert stripped is req
    assert found == Directives()


def test_other_messages_and_request_fields_are_untouched() -> None:
    req = request(
        {"role": "system", "content": "Be terse."},
        user("First question"),
        {"role": "assistant", "content": "First answer"},
        user("@@tokenhub mode=cheap\nSecond question"),
        temperature=0.3,
        metadata={"team": "search"},
    )

    stripped, _ = extract_directives(req)

    assert stripped.messages[:3] == req.messages[:3]
    assert stripped.messages[3].role == "user"
    assert stripped.messages[3].content == "Second question"
    assert stripped.temperature == 0.3
    payload = stripped.upstream_payload("upstream-model")
    assert payload["metadata"] == {"team": "search"}
    assert payload["model"] == "upstream-model"


def test_the_upstream_never_sees_the_directive_text() -> None:
    req = request(
        user([{"type": "text", "text": "@@tokenhub\nmode=cheap\n@@end\nPart one"}]),
        {"role": "assistant", "content": "ok"},
        user("@@tokenhub budget=0.02\nPart two"),
    )

    stripped, _ = extract_directives(req)

    payload = stripped.upstream_payload("upstream-model")
    assert "@@tokenhub" not in str(payload)
    assert "@@end" not in str(payload)
    assert payload["messages"][0]["content"] == [{"type": "text", "text": "Part one"}]
    assert payload["messages"][2]["content"] == "Part two"


def test_extracting_does_not_change_the_original_request() -> None:
    req = request(user("@@tokenhub mode=cheap\nHello"))

    extract_directives(req)

    assert req.messages[0].content == "@@tokenhub mode=cheap\nHello"


def test_later_messages_override_earlier_ones_key_by_key() -> None:
    req = request(
        user("@@tokenhub mode=cheap budget=0.01\nfirst"),
        {"role": "assistant", "content": "noted"},
        user("@@tokenhub mode=planning latency=800\nsecond"),
    )

    stripped, found = extract_directives(req)

    assert found == Directives(mode="planning", max_budget_usd=0.01, max_latency_ms=800.0)
    assert [m.content for m in stripped.messages] == ["first", "noted", "second"]


# --- limits: accepted at the edges, rejected past them -----------------------------------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("budget=100", Directives(max_budget_usd=100.0)),
        ("budget=0.0001", Directives(max_budget_usd=0.0001)),
        ("latency=300000", Directives(max_latency_ms=300_000.0)),
        ("latency=1", Directives(max_latency_ms=1.0)),
        ("min_weight=0", Directives(min_weight=0.0)),
        ("min_weight=10", Directives(min_weight=10.0)),
        ("min_weight=2.5", Directives(min_weight=2.5)),
    ],
)
def test_values_at_the_edges_of_their_range_are_accepted(setting: str, expected: Directives) -> None:
    _, found = extract_directives(request(user(f"@@tokenhub {setting}\nhi")))

    assert found == expected


@pytest.mark.parametrize("mode", ["cheap", "normal", "high_confidence", "planning", "adversarial"])
def test_every_mode_is_accepted(mode: str) -> None:
    _, found = extract_directives(request(user(f"@@tokenhub mode={mode}\nhi")))

    assert found.mode == mode


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("mode=fast", "mode=fast"),
        ("mode=CHEAP", "mode=CHEAP"),
        ("budget=0", "budget=0"),
        ("budget=-1", "budget=-1"),
        ("budget=100.01", "budget=100.01"),
        ("budget=cheap", "budget=cheap"),
        ("budget=nan", "budget=nan"),
        ("budget=inf", "budget=inf"),
        ("latency=0", "latency=0"),
        ("latency=300001", "latency=300001"),
        ("latency=5s", "latency=5s"),
        ("min_weight=-0.5", "min_weight=-0.5"),
        ("min_weight=10.5", "min_weight=10.5"),
        ("colour=blue", "colour=blue"),
        ("Mode=cheap", "Mode=cheap"),
        ("mode=cheap please", "please"),
        ("mode = cheap", "mode"),
        ("output_schema={not json}", "output_schema"),
        ("output_schema=", "output_schema"),
    ],
)
def test_an_invalid_directive_is_a_400_naming_it(setting: str, named: str) -> None:
    req = request({"role": "system", "content": "Be terse."}, user(f"Hi\n@@tokenhub {setting}"))

    error = rejected(req)

    assert error.code == "invalid_directive"
    assert error.param == "messages[1].content"
    assert "@@tokenhub" in error.message
    assert named in error.message


def test_an_invalid_directive_in_a_content_part_names_its_message() -> None:
    req = request(
        user("fine"),
        {"role": "assistant", "content": "ok"},
        user([{"type": "text", "text": "@@tokenhub budget=1000"}]),
    )

    error = rejected(req)

    assert error.code == "invalid_directive"
    assert error.param == "messages[2].content"
    assert "budget=1000" in error.message


def test_an_invalid_value_inside_a_block_is_a_400_naming_it() -> None:
    error = rejected(request(user("@@tokenhub\nmode=cheap\nlatency=-5\n@@end\nhi")))

    assert error.code == "invalid_directive"
    assert error.param == "messages[0].content"
    assert "latency=-5" in error.message


def test_a_stray_line_inside_a_block_is_a_400() -> None:
    error = rejected(request(user("@@tokenhub\nmode=cheap\nWhat is the capital of France?\n@@end")))

    assert error.code == "invalid_directive"
    assert error.param == "messages[0].content"


@pytest.mark.parametrize(
    "schema_text",
    [
        '{"type": "strng"}',
        '{"type": 12}',
        '{"required": "name"}',
    ],
)
def test_an_output_schema_that_is_not_a_valid_json_schema_is_a_400(schema_text: str) -> None:
    error = rejected(request(user(f"@@tokenhub output_schema={schema_text}\nhi")))

    assert error.param == "messages[0].content"
    assert error.code in {"invalid_directive", "invalid_schema"}


def test_an_output_schema_that_is_json_but_not_an_object_is_a_400() -> None:
    error = rejected(request(user('@@tokenhub output_schema=["name"]\nhi')))

    assert error.param == "messages[0].content"
    assert error.code in {"invalid_directive", "invalid_schema"}


def test_an_invalid_output_schema_directive_is_reported_as_an_invalid_directive() -> None:
    # Every invalid directive value is an ``invalid_directive`` 400 naming the directive; a schema that
    # parses as JSON but is not a JSON Schema is one too (the client must learn it came from @@tokenhub).
    error = rejected(request(user('@@tokenhub output_schema={"type": 12}\nhi')))

    assert error.code == "invalid_directive"
    assert "output_schema" in error.message


# --- a marker with nothing usable --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("@@tokenhub", id="bare marker"),
        pytest.param("@@tokenhub   \nHello", id="marker with only spaces"),
        pytest.param("@@tokenhub\nmode=cheap\nHello", id="block without @@end"),
        pytest.param("@@tokenhub\nmode=cheap", id="block without @@end at the end"),
        pytest.param("@@tokenhubmode=cheap\nHello", id="no space after the marker"),
        pytest.param("Answer cheaply @@tokenhub mode=cheap", id="marker in the middle of a line"),
    ],
)
def test_a_marker_with_nothing_usable_is_a_400_not_ignored(content: str) -> None:
    error = rejected(request(user(content)))

    assert error.code == "invalid_directive"
    assert error.param == "messages[0].content"


def test_an_empty_block_is_a_400_not_ignored() -> None:
    # A block with no key=value lines has nothing usable: the client meant to set something.
    error = rejected(request(user("@@tokenhub\n@@end\nHello")))

    assert error.code == "invalid_directive"
    assert error.param == "messages[0].content"


# --- applying to a policy ----------------------------------------------------------------------------


def test_directives_override_every_policy_value_they_set() -> None:
    policy = Policy(mode="normal", max_budget_usd=1.0, max_latency_ms=10_000.0, min_weight=1.0)
    directives = Directives(mode="cheap", max_budget_usd=0.01, max_latency_ms=5000.0, min_weight=5.0)

    assert directives.apply(policy) == Policy(
        mode="cheap", max_budget_usd=0.01, max_latency_ms=5000.0, min_weight=5.0
    )


def test_directives_keep_the_policy_values_they_do_not_set() -> None:
    policy = Policy(mode="planning", max_budget_usd=2.0, max_latency_ms=3000.0, min_weight=4.0)

    assert Directives(max_budget_usd=0.5).apply(policy) == Policy(
        mode="planning", max_budget_usd=0.5, max_latency_ms=3000.0, min_weight=4.0
    )
    assert Directives().apply(policy) == policy


def test_a_zero_min_weight_directive_overrides_a_higher_policy_value() -> None:
    policy = Policy(min_weight=6.0)

    assert Directives(min_weight=0.0).apply(policy).min_weight == 0.0


def test_a_budget_directive_sets_a_limit_where_the_policy_had_none() -> None:
    _, found = extract_directives(request(user("@@tokenhub budget=0.03 latency=250\nhi")))

    applied = found.apply(Policy())

    assert applied == Policy(mode="normal", max_budget_usd=0.03, max_latency_ms=250.0, min_weight=0.0)


# --- the mode header ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cheap", "normal", "high_confidence", "planning", "adversarial"])
def test_parse_mode_accepts_every_mode(mode: str) -> None:
    assert parse_mode(mode, param="x-tokenhub-mode") == mode


@pytest.mark.parametrize("value", ["turbo", "", "Cheap", " cheap"])
def test_parse_mode_rejects_anything_else_naming_the_param(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_mode(value, param="x-tokenhub-mode")

    error = caught.value
    assert error.code == "invalid_mode"
    assert error.param == "x-tokenhub-mode"
    assert f"'{value}'" in error.message
    assert "high_confidence" in error.message


def test_directives_in_one_message_apply_in_the_order_they_are_written() -> None:
    written = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "user", "content": "@@tokenhub mode=cheap\n@@tokenhub\nmode=planning\n@@end\nGo"}
            ]
        }
    )
    stripped, found = extract_directives(written)
    assert found.mode == "planning"
    assert stripped.messages[0].content == "Go"
