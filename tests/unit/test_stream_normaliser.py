"""ChunkNormaliser: whatever the upstream sends, the client gets OpenAI's chunk sequence exactly."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.conftest import as_sent
from tokenhub.engine import UpstreamError
from tokenhub.engine.providers.base import Chunk, ContentChunk
from tokenhub.engine.streaming import ChunkNormaliser

PROMPT_ESTIMATE = 11


def normaliser(*, include_usage: bool = False, model_id: str = "our-model") -> ChunkNormaliser:
    return ChunkNormaliser(
        model_id=model_id, include_usage=include_usage, prompt_tokens_estimate=PROMPT_ESTIMATE
    )


def upstream_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    index: int = 0,
    chunk_id: str = "chatcmpl-up",
    created: int = 1_700_000_000,
    model: str = "upstream-model",
    **extra: Any,
) -> Chunk:
    choice = {"index": index, "delta": delta if delta is not None else {}, "finish_reason": finish_reason}
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
        **extra,
    }


def feed_all(norm: ChunkNormaliser, chunks: Iterable[Chunk]) -> list[Chunk]:
    return as_sent(norm.feed_all(list(chunks)))


def deltas(chunks: list[Chunk], index: int = 0) -> list[dict[str, Any]]:
    return [c["delta"] for chunk in chunks for c in chunk["choices"] if c["index"] == index]


def finish_reasons(chunks: list[Chunk], index: int = 0) -> list[str]:
    return [
        c["finish_reason"]
        for chunk in chunks
        for c in chunk["choices"]
        if c["index"] == index and c["finish_reason"] is not None
    ]


def text_of(chunks: list[Chunk], index: int = 0) -> str:
    return "".join(d.get("content") or "" for d in deltas(chunks, index))


def tool_call_deltas(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [call for d in deltas(chunks) for call in d.get("tool_calls") or ()]


HELLO = [
    upstream_chunk({"role": "assistant", "content": ""}),
    upstream_chunk({"content": "Hel"}),
    upstream_chunk({"content": "lo"}),
    upstream_chunk({}, "stop"),
]


# --- envelope --------------------------------------------------------------------------------------


def test_every_chunk_has_one_id_created_and_our_model_name_even_when_the_upstream_varies_them() -> None:
    norm = normaliser()
    chunks = [
        upstream_chunk({"content": "a"}, chunk_id="first", created=100, model="up-1"),
        upstream_chunk({"content": "b"}, chunk_id="second", created=101, model="up-2"),
        upstream_chunk({}, "stop", chunk_id="", created=0, model=""),
    ]

    out = feed_all(norm, chunks)

    assert len(out) == 3
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in out} == {
        ("first", 100, "our-model", "chat.completion.chunk")
    }


def test_an_upstream_without_id_or_created_gets_one_generated_for_the_whole_stream() -> None:
    norm = normaliser()
    chunks = [{"choices": [{"index": 0, "delta": {"content": "a"}}]}, upstream_chunk({}, "stop")]

    out = feed_all(norm, chunks)

    ids = {c["id"] for c in out}
    createds = {c["created"] for c in out}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    assert len(createds) == 1
    assert isinstance(createds.pop(), int)


def test_a_choices_other_keys_pass_through_before_its_finish_reason() -> None:
    logprobs = {"content": [{"token": "a", "logprob": -0.1, "top_logprobs": []}]}
    with_logprobs = upstream_chunk({"content": "a"})
    with_logprobs["choices"][0]["logprobs"] = logprobs
    out = feed_all(normaliser(), [upstream_chunk({"content": ""}), with_logprobs, upstream_chunk({}, "stop")])
    assert [list(c["choices"][0]) for c in out] == [
        ["index", "delta", "finish_reason"],
        ["index", "delta", "logprobs", "finish_reason"],
        ["index", "delta", "finish_reason"],
    ]
    assert out[1]["choices"][0]["logprobs"] == logprobs


def test_the_first_system_fingerprint_is_kept_on_every_chunk() -> None:
    norm = normaliser()

    out = feed_all(
        norm,
        [
            upstream_chunk({"content": "a"}, system_fingerprint="fp_1"),
            upstream_chunk({}, "stop", system_fingerprint="fp_2"),
        ],
    )

    assert [c["system_fingerprint"] for c in out] == ["fp_1", "fp_1"]


# --- role ------------------------------------------------------------------------------------------


def test_role_is_injected_into_the_first_delta_when_the_upstream_omits_it() -> None:
    out = feed_all(normaliser(), [upstream_chunk({"content": "Hi"}), upstream_chunk({}, "stop")])

    assert deltas(out) == [{"role": "assistant", "content": "Hi"}, {}]


def test_role_is_removed_from_later_deltas() -> None:
    out = feed_all(
        normaliser(),
        [
            upstream_chunk({"role": "assistant", "content": "a"}),
            upstream_chunk({"role": "assistant", "content": "b"}),
            upstream_chunk({"role": "assistant"}, "stop"),
        ],
    )

    assert [("role" in d) for d in deltas(out)] == [True, False, False]
    assert deltas(out)[0]["role"] == "assistant"
    assert text_of(out) == "ab"


# --- tool calls ------------------------------------------------------------------------------------


def test_tool_call_fragments_keep_index_and_carry_id_type_name_only_on_the_first() -> None:
    # This upstream repeats id, type and name on every fragment.
    def fragment(args: str) -> Chunk:
        call = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": args},
        }
        return upstream_chunk({"tool_calls": [call]})

    out = feed_all(
        normaliser(), [fragment('{"city":'), fragment(' "Oslo"}'), upstream_chunk({}, "tool_calls")]
    )

    assert tool_call_deltas(out) == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":'},
        },
        {"index": 0, "function": {"arguments": ' "Oslo"}'}},
    ]
    assert finish_reasons(out) == ["tool_calls"]


def test_tool_calls_without_index_are_placed_by_id_then_as_the_latest_call() -> None:
    # This upstream never sends an index: the first fragment of each call carries its id, later ones none.
    out = feed_all(
        normaliser(),
        [
            upstream_chunk({"tool_calls": [{"id": "call_a", "function": {"name": "f", "arguments": "{"}}]}),
            upstream_chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
            upstream_chunk({"tool_calls": [{"id": "call_b", "function": {"name": "g", "arguments": "["}}]}),
            upstream_chunk({"tool_calls": [{"id": "call_b", "function": {"arguments": "]"}}]}),
            upstream_chunk({"tool_calls": [{"function": {"arguments": " "}}]}),
            upstream_chunk({}, "tool_calls"),
        ],
    )

    assert tool_call_deltas(out) == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{"}},
        {"index": 0, "function": {"arguments": "}"}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "["}},
        {"index": 1, "function": {"arguments": "]"}},
        {"index": 1, "function": {"arguments": " "}},
    ]


def test_a_tool_call_without_an_id_gets_one_generated_on_its_first_delta() -> None:
    out = feed_all(
        normaliser(),
        [
            upstream_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ""}}]}),
            upstream_chunk({}, "tool_calls"),
        ],
    )

    (first,) = tool_call_deltas(out)
    assert first["id"].startswith("call_")
    assert (first["type"], first["function"]["name"]) == ("function", "f")


def test_parallel_tool_calls_in_one_chunk_keep_their_own_indexes() -> None:
    calls = [
        {"index": 0, "id": "c0", "function": {"name": "a", "arguments": "{}"}},
        {"index": 1, "id": "c1", "function": {"name": "b", "arguments": "{}"}},
    ]

    out = feed_all(normaliser(), [upstream_chunk({"tool_calls": calls}), upstream_chunk({}, "tool_calls")])

    assert [(c["index"], c["id"]) for c in tool_call_deltas(out)] == [(0, "c0"), (1, "c1")]


# --- finish_reason ---------------------------------------------------------------------------------


def test_a_second_finish_reason_is_dropped() -> None:
    norm = normaliser()

    out = feed_all(norm, [*HELLO, upstream_chunk({}, "stop"), upstream_chunk({}, "length")])

    assert finish_reasons(out) == ["stop"]
    assert norm.finish_reason == "stop"


def test_content_after_the_finish_reason_is_dropped() -> None:
    norm = normaliser()

    out = feed_all(norm, [*HELLO, upstream_chunk({"content": " world"})])

    assert text_of(out) == "Hello"
    assert norm.feed(upstream_chunk({"content": "more"})) == []


def test_chunks_before_the_finish_carry_a_null_finish_reason() -> None:
    out = feed_all(normaliser(), HELLO)

    assert [c["finish_reason"] for chunk in out for c in chunk["choices"]] == [None, None, None, "stop"]


def test_an_empty_string_finish_reason_is_sent_as_null() -> None:
    # Some upstreams send "" instead of null on every chunk before the last.
    chunks = [
        upstream_chunk({"content": "a"}, ""),
        upstream_chunk({"content": "b"}, ""),
        upstream_chunk({}, "stop"),
    ]

    out = feed_all(normaliser(), chunks)

    assert [c["finish_reason"] for chunk in out for c in chunk["choices"]] == [None, None, "stop"]


def test_finish_raises_a_transient_upstream_error_when_no_finish_reason_was_seen() -> None:
    norm = normaliser(include_usage=True)
    feed_all(norm, HELLO[:-1])

    with pytest.raises(UpstreamError) as info:
        norm.finish()

    assert info.value.error_class == "transient"


def test_finish_raises_when_the_upstream_sent_nothing_at_all() -> None:
    with pytest.raises(UpstreamError) as info:
        normaliser().finish()

    assert info.value.error_class == "transient"


# --- usage -----------------------------------------------------------------------------------------


UPSTREAM_USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def test_with_include_usage_every_chunk_has_null_usage_and_finish_sends_the_upstream_usage() -> None:
    norm = normaliser(include_usage=True)
    usage_chunk: Chunk = {
        "id": "chatcmpl-up",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": UPSTREAM_USAGE,
    }

    out = feed_all(norm, [*HELLO, usage_chunk])
    final = norm.finish()

    assert len(out) == len(HELLO)  # the upstream's usage chunk is held for the end
    assert all("usage" in c and c["usage"] is None for c in out)
    assert len(final) == 1
    assert final[0]["choices"] == []
    assert final[0]["usage"] == UPSTREAM_USAGE
    assert (final[0]["id"], final[0]["model"], final[0]["object"]) == (
        out[0]["id"],
        "our-model",
        "chat.completion.chunk",
    )


def test_with_include_usage_and_no_upstream_usage_finish_sends_an_estimate() -> None:
    norm = normaliser(include_usage=True)
    feed_all(norm, HELLO)  # "Hello": 5 characters, (5 + 3) // 4 = 2 tokens

    (final,) = norm.finish()

    assert final["choices"] == []
    assert final["usage"] == {
        "prompt_tokens": PROMPT_ESTIMATE,
        "completion_tokens": 2,
        "total_tokens": PROMPT_ESTIMATE + 2,
    }


def test_usage_on_a_content_chunk_is_kept_for_the_end_not_forwarded_inline() -> None:
    norm = normaliser(include_usage=True)

    out = feed_all(norm, [upstream_chunk({"content": "x"}), upstream_chunk({}, "stop", usage=UPSTREAM_USAGE)])

    assert [c["usage"] for c in out] == [None, None]
    assert norm.finish()[0]["usage"] == UPSTREAM_USAGE


def test_without_include_usage_no_chunk_has_a_usage_key_and_finish_sends_nothing() -> None:
    norm = normaliser(include_usage=False)
    usage_chunk: Chunk = {"id": "x", "created": 1, "model": "m", "choices": [], "usage": UPSTREAM_USAGE}

    out = feed_all(
        norm, [upstream_chunk({"content": "a"}, usage=None), upstream_chunk({}, "stop"), usage_chunk]
    )

    assert out
    assert all("usage" not in c for c in out)
    assert norm.finish() == []


def test_tokens_report_the_upstream_usage_when_it_sent_one() -> None:
    norm = normaliser()
    feed_all(norm, [*HELLO, {"choices": [], "usage": UPSTREAM_USAGE}])

    tokens = norm.tokens()

    assert (tokens.input_tokens, tokens.output_tokens, tokens.estimated) == (9, 2, False)


def test_tokens_are_an_estimate_flagged_as_such_when_the_upstream_sent_no_usage() -> None:
    norm = normaliser()
    # 12 characters of content and 6 of tool-call arguments: (18 + 3) // 4 = 5 tokens.
    feed_all(
        norm,
        [
            upstream_chunk({"content": "Hello world!"}),
            upstream_chunk(
                {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a":'}}]}
            ),
            upstream_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1"}}]}),
            upstream_chunk({}, "tool_calls"),
        ],
    )

    tokens = norm.tokens()

    assert (tokens.input_tokens, tokens.output_tokens, tokens.estimated) == (PROMPT_ESTIMATE, 5, True)


# --- several choices -------------------------------------------------------------------------------


def test_two_choices_get_their_own_role_and_finish_reason() -> None:
    norm = normaliser(include_usage=True)

    out = feed_all(
        norm,
        [
            upstream_chunk({"content": "A"}, index=0),
            upstream_chunk({"content": "B"}, index=1),
            upstream_chunk({"role": "assistant", "content": "a"}, index=0),
            upstream_chunk({}, "stop", index=0),
            upstream_chunk({"content": "b"}, index=1),
            upstream_chunk({}, "length", index=1),
        ],
    )

    assert deltas(out, 0)[0] == {"role": "assistant", "content": "A"}
    assert deltas(out, 1)[0] == {"role": "assistant", "content": "B"}
    assert all("role" not in d for d in deltas(out, 0)[1:] + deltas(out, 1)[1:])
    assert (text_of(out, 0), text_of(out, 1)) == ("Aa", "Bb")
    assert (finish_reasons(out, 0), finish_reasons(out, 1)) == (["stop"], ["length"])
    assert len(norm.finish()) == 1


def test_a_finished_choice_does_not_silence_the_other() -> None:
    out = feed_all(
        normaliser(),
        [
            upstream_chunk({"content": "A"}, "stop", index=0),
            upstream_chunk({"content": "late"}, index=0),
            upstream_chunk({"content": "B"}, index=1),
            upstream_chunk({}, "stop", index=1),
        ],
    )

    assert (text_of(out, 0), text_of(out, 1)) == ("A", "B")


def test_finish_raises_when_one_of_two_choices_never_finished() -> None:
    norm = normaliser()
    feed_all(
        norm, [upstream_chunk({"content": "A"}, "stop", index=0), upstream_chunk({"content": "B"}, index=1)]
    )

    with pytest.raises(UpstreamError) as info:
        norm.finish()

    assert info.value.error_class == "transient"


def test_two_choices_in_one_upstream_chunk_stay_in_one_chunk() -> None:
    both: Chunk = {
        "id": "x",
        "created": 1,
        "choices": [
            {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
            {"index": 1, "delta": {"content": "b"}, "finish_reason": None},
        ],
    }

    out = as_sent(normaliser().feed(both))

    assert len(out) == 1
    assert [(c["index"], c["delta"]) for c in out[0]["choices"]] == [
        (0, {"role": "assistant", "content": "a"}),
        (1, {"role": "assistant", "content": "b"}),
    ]


def test_text_passed_on_unparsed_to_a_choice_not_started_gets_its_role_once() -> None:
    template = upstream_chunk({"content": "a"})
    norm = normaliser()
    out = as_sent(norm.feed_all([ContentChunk(template, b'"a"', 1), ContentChunk(template, b'"b c"', 3)]))
    assert deltas(out) == [{"role": "assistant", "content": "a"}, {"content": "b c"}]
    assert norm.tokens().output_tokens == 1  # (1 + 3 characters + 3) // 4
