"""Output shaping: the answer's form (json, markdown, text, think-stripping, length) and its JSON Schema."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from tokenhub.engine import ChatCompletion, InvalidRequest, OutputInvalid
from tokenhub.engine.shaping import OutputFormat, Shaping, check_schema, shape_completion, shape_text

JSON = Shaping(output_format=OutputFormat(type="json"))
TEXT = Shaping(output_format=OutputFormat(type="text"))
MARKDOWN = Shaping(output_format=OutputFormat(type="markdown"))
PERSON = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
}


def completion(*contents: str | None) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-42",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "demo-large",
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
                for i, c in enumerate(contents)
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
        }
    )


def invalid(text: str, shaping: Shaping) -> OutputInvalid:
    with pytest.raises(OutputInvalid) as caught:
        shape_text(text, shaping)
    return caught.value


# --- strip_think -------------------------------------------------------------------------------------


def test_strip_think_removes_the_reasoning_and_keeps_the_answer() -> None:
    shaping = Shaping(output_format=OutputFormat(strip_think=True))

    assert shape_text("<think>Let me see.\nIt is 4.</think>\n\nThe answer is 4.", shaping) == (
        "The answer is 4."
    )


def test_strip_think_removes_every_think_block_whatever_its_case() -> None:
    shaping = Shaping(output_format=OutputFormat(strip_think=True))
    text = "<THINK>first</THINK>Alpha <think>second</think>Beta"

    assert shape_text(text, shaping) == "Alpha Beta"


def test_without_strip_think_the_reasoning_is_kept() -> None:
    shaping = Shaping(output_format=OutputFormat(type="markdown"))

    assert shape_text("<think>hmm</think> Answer", shaping) == "<think>hmm</think> Answer"


def test_strip_think_runs_before_json_extraction() -> None:
    shaping = Shaping(output_format=OutputFormat(type="json", strip_think=True))

    assert shape_text('<think>maybe {"draft": true}</think>{"final": 1}', shaping) == '{"final": 1}'


# --- json --------------------------------------------------------------------------------------------


def test_json_takes_the_fenced_json_block() -> None:
    text = 'Here you go:\n```json\n{"city": "Oslo", "temp_c": 4}\n```\nAnything else?'

    assert shape_text(text, JSON) == '{"city": "Oslo", "temp_c": 4}'


def test_json_takes_an_unlabelled_fence_too() -> None:
    assert shape_text("```\n[1, 2, 3]\n```", JSON) == "[1, 2, 3]"


def test_json_takes_the_object_out_of_surrounding_prose() -> None:
    text = 'Sure! {"name": "Ada", "tags": {"field": "maths"}} Hope that helps.'

    assert shape_text(text, JSON) == '{"name": "Ada", "tags": {"field": "maths"}}'


def test_json_takes_an_array_out_of_surrounding_prose() -> None:
    assert shape_text("The primes: [2, 3, 5, 7].", JSON) == "[2, 3, 5, 7]"


def test_json_output_is_parseable_json() -> None:
    out = shape_text('Result:\n```json\n{"ok": true, "n": [1, 2]}\n```', JSON)

    assert orjson.loads(out) == {"ok": True, "n": [1, 2]}


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("I cannot answer that.", id="prose"),
        pytest.param('{"name": "Ada", "age": ', id="cut-off object"),
        pytest.param("```json\n{name: 'Ada'}\n```", id="fenced non-json"),
        pytest.param("", id="empty"),
        pytest.param('{"a": 1} and also {"b": 2}', id="two objects"),
    ],
)
def test_an_answer_that_is_not_json_is_output_invalid(text: str) -> None:
    error = invalid(text, JSON)

    assert "JSON" in error.message


# --- output_schema -----------------------------------------------------------------------------------


def test_an_answer_matching_the_schema_passes() -> None:
    shaping = Shaping(output_format=OutputFormat(type="json"), output_schema=PERSON)

    assert shape_text('```json\n{"name": "Ada", "age": 36}\n```', shaping) == '{"name": "Ada", "age": 36}'


def test_a_missing_required_property_is_output_invalid_with_the_validators_message() -> None:
    shaping = Shaping(output_format=OutputFormat(type="json"), output_schema=PERSON)

    error = invalid('{"age": 36}', shaping)

    assert "'name' is a required property" in error.message


def test_a_mismatch_deep_in_the_answer_names_its_path() -> None:
    schema = {
        "type": "object",
        "properties": {"people": {"type": "array", "items": PERSON}},
    }
    shaping = Shaping(output_format=OutputFormat(type="json"), output_schema=schema)

    error = invalid('{"people": [{"name": "Ada"}, {"name": "Alan", "age": "forty-one"}]}', shaping)

    assert "'forty-one' is not of type 'integer'" in error.message
    assert "/people/1/age" in error.message


def test_the_schema_is_checked_even_without_a_json_output_format() -> None:
    shaping = Shaping(output_schema=PERSON)

    shape_text('{"name": "Ada"}', shaping)
    error = invalid('{"name": 7}', shaping)

    assert "7 is not of type 'string'" in error.message
    assert "/name" in error.message


def test_a_schema_on_an_answer_that_is_not_json_is_output_invalid() -> None:
    error = invalid("Ada Lovelace", Shaping(output_schema=PERSON))

    assert "JSON" in error.message


def test_schemas_are_checked_as_draft_2020_12() -> None:
    # prefixItems only exists from draft 2020-12; an older draft would ignore it and accept the answer.
    schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    shaping = Shaping(output_format=OutputFormat(type="json"), output_schema=schema)

    assert shape_text("[1, 2]", shaping) == "[1, 2]"
    error = invalid('["one", 2]', shaping)
    assert "'one' is not of type 'integer'" in error.message
    assert "/0" in error.message


def test_schema_keywords_like_enum_and_minimum_are_enforced() -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green"]},
            "count": {"type": "integer", "minimum": 1},
        },
    }
    shaping = Shaping(output_format=OutputFormat(type="json"), output_schema=schema)

    assert "'blue' is not one of ['red', 'green']" in invalid('{"colour": "blue"}', shaping).message
    assert "0 is less than the minimum of 1" in invalid('{"count": 0}', shaping).message


# --- check_schema ------------------------------------------------------------------------------------


def test_check_schema_returns_a_valid_schema() -> None:
    assert check_schema(PERSON, param="output_schema") == PERSON


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(["name"], id="list"),
        pytest.param("object", id="string"),
        pytest.param(True, id="boolean schema"),
        pytest.param(None, id="null"),
    ],
)
def test_check_schema_rejects_a_schema_that_is_not_an_object(schema: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, param="response_format.json_schema.schema")

    assert caught.value.code == "invalid_schema"
    assert caught.value.param == "response_format.json_schema.schema"


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "strng"}, id="unknown type"),
        pytest.param({"type": "object", "required": "name"}, id="required not a list"),
        pytest.param({"type": "array", "minItems": -1}, id="negative minItems"),
    ],
)
def test_check_schema_rejects_an_invalid_json_schema(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, param="output_schema")

    assert caught.value.code == "invalid_schema"
    assert caught.value.param == "output_schema"
    assert "Invalid JSON Schema" in caught.value.message


# --- text and markdown -------------------------------------------------------------------------------


def test_text_strips_headings_emphasis_and_code_markers() -> None:
    text = "# Title\n## Section\nThis is **bold**, *italic*, __strong__ and `code`."

    assert shape_text(text, TEXT) == "Title\nSection\nThis is bold, italic, strong and code."


def test_text_trims_surrounding_whitespace() -> None:
    assert shape_text("\n\n  Plain answer.  \n", TEXT) == "Plain answer."


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param("Call get_user_id first.", "Call get_user_id first.", id="snake_case identifier"),
        pytest.param("Open my_notes.txt", "Open my_notes.txt", id="file name"),
        pytest.param("2 * 3 = 6", "2 * 3 = 6", id="multiplication"),
    ],
)
def test_text_keeps_characters_that_are_not_markdown_markers(answer: str, expected: str) -> None:
    assert shape_text(answer, TEXT) == expected


def test_text_keeps_the_blank_line_before_a_heading() -> None:
    assert shape_text("Intro.\n\n## Details\nMore.", TEXT) == "Intro.\n\nDetails\nMore."


def test_markdown_trims_but_keeps_the_markup() -> None:
    text = "\n  # Title\n\n**bold** and `code`\n\n  "

    assert shape_text(text, MARKDOWN) == "# Title\n\n**bold** and `code`"


def test_no_output_type_leaves_the_text_as_written() -> None:
    shaping = Shaping(output_format=OutputFormat())

    assert shape_text("  **as** written  ", shaping) == "  **as** written  "


# --- max_tokens --------------------------------------------------------------------------------------


def test_max_tokens_truncates_at_about_four_characters_a_token_and_marks_it() -> None:
    shaping = Shaping(output_format=OutputFormat(max_tokens=2))

    assert shape_text("abcdefghij", shaping) == "abcdefgh..."


def test_max_tokens_leaves_an_answer_that_fits_alone() -> None:
    shaping = Shaping(output_format=OutputFormat(max_tokens=2))

    assert shape_text("abcdefgh", shaping) == "abcdefgh"


def test_max_tokens_does_not_leave_trailing_spaces_before_the_ellipsis() -> None:
    shaping = Shaping(output_format=OutputFormat(max_tokens=2))

    assert shape_text("abcdefg hijk", shaping) == "abcdefg..."


def test_max_tokens_applies_after_the_text_is_shaped() -> None:
    shaping = Shaping(output_format=OutputFormat(type="text", strip_think=True, max_tokens=3))

    # "<think>…</think>" and "**" go first; "Hello world, again" is then cut to 12 characters.
    assert shape_text("<think>long reasoning</think>**Hello** world, again", shaping) == "Hello world,..."


# --- OutputFormat and Shaping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"type": "xml"}, id="unknown type"),
        pytest.param({"max_tokens": 0}, id="zero max_tokens"),
        pytest.param({"max_tokens": "5"}, id="max_tokens as a string"),
        pytest.param({"strip_think": "yes"}, id="strip_think not a bool"),
        pytest.param({"indent": 2}, id="unknown field"),
    ],
)
def test_an_invalid_output_format_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OutputFormat.model_validate(fields)


def test_an_output_format_reads_from_a_request_body() -> None:
    shaping = Shaping.model_validate(
        {"output_format": {"type": "json", "strip_think": True, "max_tokens": 50}, "output_schema": PERSON}
    )

    assert shaping.output_format == OutputFormat(type="json", strip_think=True, max_tokens=50)
    assert shaping.output_schema == PERSON
    assert not shaping.empty


def test_a_shaping_with_nothing_asked_is_empty() -> None:
    assert Shaping().empty
    assert not Shaping(output_format=OutputFormat()).empty
    assert not Shaping(output_schema={"type": "object"}).empty


# --- shape_completion --------------------------------------------------------------------------------


def test_an_empty_shaping_returns_the_completion_unchanged() -> None:
    original = completion("  **raw** <think>x</think> answer  ")

    assert shape_completion(original, Shaping()) is original


def test_shape_completion_changes_only_the_message_contents() -> None:
    original = ChatCompletion.model_validate(
        {
            "id": "chatcmpl-42",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "demo-large",
            "system_fingerprint": "fp_123",
            "service_tier": "default",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": 'Here:\n```json\n{"name": "Ada"}\n```'},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46},
        }
    )

    shaped = shape_completion(
        original, Shaping(output_format=OutputFormat(type="json"), output_schema=PERSON)
    )

    assert shaped.choices[0].message.content == '{"name": "Ada"}'
    assert shaped.model_dump(exclude={"choices"}) == original.model_dump(exclude={"choices"})
    assert shaped.id == "chatcmpl-42"
    assert shaped.usage is not None
    assert (shaped.usage.prompt_tokens, shaped.usage.completion_tokens, shaped.usage.total_tokens) == (
        12,
        34,
        46,
    )
    assert shaped.model_dump()["system_fingerprint"] == "fp_123"
    choice = shaped.model_dump()["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": '{"name": "Ada"}', "tool_calls": None},
        "finish_reason": "stop",
        "logprobs": None,
    }


def test_shape_completion_does_not_change_the_original() -> None:
    original = completion("<think>x</think>Answer")

    shape_completion(original, Shaping(output_format=OutputFormat(strip_think=True)))

    assert original.choices[0].message.content == "<think>x</think>Answer"


def test_shape_completion_shapes_every_choice() -> None:
    original = completion("# One", "## Two")

    shaped = shape_completion(original, TEXT)

    assert [c.message.content for c in shaped.choices] == ["One", "Two"]
    assert [c.index for c in shaped.choices] == [0, 1]


def test_one_choice_failing_the_schema_fails_the_completion() -> None:
    original = completion('{"name": "Ada"}', '{"nom": "Ada"}')

    with pytest.raises(OutputInvalid) as caught:
        shape_completion(original, Shaping(output_format=OutputFormat(type="json"), output_schema=PERSON))

    assert "'name' is a required property" in caught.value.message
