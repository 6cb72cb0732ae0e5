"""The gateway's pure parts: routing decisions and OpenAI translation, from data."""

from __future__ import annotations

import pytest

from rbee_fabric.errors import ModelNotFound, NodesUnavailable, QueueFull, UsageError
from rbee_fabric.gateway import routing, translate
from rbee_fabric.gateway.routing import NodeView, Target, WorkerView
from rbee_fabric.schemas import DoneEvent, OpenAIChatRequest, OpenAICompletionRequest

NODES = {"localhost", "labnode1", "labnode2"}


def test_a_node_prefix_pins_and_anything_else_is_a_reference() -> None:
    assert routing.parse_target("labnode1/gemma3-270m", NODES) == Target("gemma3-270m", "labnode1")
    assert routing.parse_target("hf:org/repo:Q4_K_M", NODES) == Target("hf:org/repo:Q4_K_M")
    assert routing.parse_target("labnode2/hf:org/repo", NODES) == Target("hf:org/repo", "labnode2")
    assert routing.parse_target("file:///m/x.gguf", NODES) == Target("file:/m/x.gguf")
    with pytest.raises(ModelNotFound):
        routing.parse_target("unknown-model", NODES)
    with pytest.raises(ModelNotFound):
        routing.parse_target("othernode/gemma3-270m", NODES)  # not a node of the inventory


def view(name: str, *workers: WorkerView, holds: bool = False, up: bool = True, local: bool = False) -> NodeView:
    return NodeView(name=name, up=up, local=local, catalog_known=True, holds=holds or bool(workers),
                    workers=list(workers))  # fmt: skip


def test_an_idle_loaded_worker_comes_first() -> None:
    plans = routing.plans(Target("m"), [
        view("a", WorkerView("w1", "u1", "busy", inflight=1)),
        view("b", WorkerView("w2", "u2", "idle")),
    ])  # fmt: skip
    assert [(p.node, p.worker.id if p.worker else None) for p in plans] == [("b", "w2"), ("a", "w1")]


def test_when_the_loaded_node_is_busy_another_node_holding_the_model_is_started() -> None:
    plans = routing.plans(Target("m"), [
        view("a", WorkerView("w1", "u1", "busy", inflight=1)),
        view("b", holds=True),
        view("c"),
    ])  # fmt: skip
    assert [(p.node, p.tier) for p in plans] == [("b", 2), ("a", 3), ("c", 4)]


def test_busy_workers_are_ordered_by_queue_length() -> None:
    plans = routing.plans(Target("m"), [
        view("a", WorkerView("w1", "u1", "busy", queued=3, inflight=1)),
        view("b", WorkerView("w2", "u2", "busy", queued=1)),
    ])  # fmt: skip
    assert [p.node for p in plans] == ["b", "a"]


def test_down_nodes_are_skipped_and_a_pin_to_one_says_so() -> None:
    views = [view("a", WorkerView("w1", "u1", "idle"), up=False), view("b", holds=True)]
    assert [p.node for p in routing.plans(Target("m"), views)] == ["b"]
    views[0].down_reason = "connection refused"
    with pytest.raises(NodesUnavailable) as exc:
        routing.plans(Target("m", "a"), views)
    assert "connection refused" in exc.value.message


def test_with_nothing_known_the_local_node_is_tried_first() -> None:
    views = [NodeView("remote", up=True), NodeView("localhost", up=True, local=True)]
    assert [p.node for p in routing.plans(Target("m"), views)] == ["localhost", "remote"]


def test_chat_request_translation() -> None:
    r = translate.parse_request({
        "model": "gemma3-270m",
        "messages": [{"role": "developer", "content": "be brief"},
                     {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
        "max_tokens": 9, "max_completion_tokens": 5, "stop": "END", "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "presence_penalty": 0, "logprobs": False,
    }, OpenAIChatRequest)  # fmt: skip
    req = translate.chat_inference(r)
    assert [(m.role, m.content) for m in req.messages or []] == [("system", "be brief"), ("user", "hi there")]
    assert req.max_tokens == 5 and req.stop == ["END"] and req.seed == 3
    assert req.response_format is not None and req.response_format.type == "json_schema"
    assert req.response_format.json_schema == {"type": "object"}
    no_limit = translate.chat_inference(
        translate.parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, OpenAIChatRequest)
    )
    assert no_limit.max_tokens is None  # until the end of the turn


def test_completion_defaults_to_16_tokens_like_openai() -> None:
    r = translate.parse_request({"model": "m", "prompt": ["Once"]}, OpenAICompletionRequest)
    req = translate.completion_inference(r)
    assert req.prompt == "Once" and req.max_tokens == 16 and req.messages is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"mirostat": 1}, "mirostat"),
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_unsupported_or_invalid_fields_are_refused_by_name(body: dict[str, object], param: str) -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(UsageError) as exc:
        translate.parse_request({**base, **body}, OpenAIChatRequest)
    assert param in exc.value.message
    assert translate.openai_status(exc.value) == 400


def test_usage_and_finish_reason_from_the_done_event() -> None:
    done = DoneEvent(total_tokens=7, duration_ms=10, stop_reason="length", prompt_tokens=4)
    assert translate.usage(done, 0).model_dump() == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert translate.finish_reason(done) == "length"
    assert translate.finish_reason(DoneEvent(total_tokens=1, duration_ms=1)) == "stop"


def test_error_objects_carry_the_code_and_a_retry_after() -> None:
    full = QueueFull("the queue is full", details={"retry_after_s": 2.5})
    body = translate.error_object(full).model_dump()
    assert body["error"]["code"] == "QUEUE_FULL" and body["error"]["type"] == "rate_limit_error"
    assert translate.retry_after(full) == "3"
    assert translate.retry_after(ModelNotFound("x")) is None
