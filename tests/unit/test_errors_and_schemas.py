import pytest
from pydantic import ValidationError

from rbee_fabric import errors, schemas, sse


def test_envelope_round_trip_rebuilds_the_type_from_the_code() -> None:
    err = errors.InsufficientRam("needs 900 MB, 400 MB available", details={"required_mb": 900})
    body = err.envelope()
    assert set(body["error"]) == {"code", "message", "details"}
    back = errors.from_envelope(body)
    assert isinstance(back, errors.InsufficientRam)
    assert back.details["required_mb"] == 900
    assert back.hint == err.hint  # the hint travels in details


def test_unknown_code_and_garbage_become_internal_errors() -> None:
    assert isinstance(errors.from_envelope({"error": {"code": "NOPE", "message": "x"}}), errors.InternalError)
    garbage = errors.from_envelope("<html>bad gateway</html>", status=502)
    assert isinstance(garbage, errors.InternalError)
    assert "502" in garbage.message


def test_every_documented_code_has_a_class() -> None:
    for code in ["CONNECTION_TIMEOUT", "VERSION_MISMATCH", "MODEL_NOT_FOUND", "DOWNLOAD_FAILED",
                 "INSUFFICIENT_RAM", "VRAM_EXHAUSTED", "BACKEND_UNAVAILABLE", "INVALID_API_KEY",
                 "ALL_SLOTS_BUSY", "WORKER_CRASHED", "LOADING_TIMEOUT", "REQUEST_CANCELED",
                 "QUEUE_FULL", "QUEUE_TIMEOUT", "CONNECTION_LOST", "CONTEXT_TOO_LONG",
                 "INVALID_REQUEST"]:
        assert errors.error_class(code).code == code
    assert errors.RequestCanceled.exit_code == 130
    assert errors.UsageError.exit_code == 2


def test_messages_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        schemas.InferenceRequest.model_validate({"prompt": "hi", "max_token": 5})
    with pytest.raises(ValidationError):
        schemas.InferenceRequest.model_validate({"prompt": "", "max_tokens": 5})


async def _lines(chunks: list[bytes]):  # type: ignore[no-untyped-def]
    for line in b"".join(chunks).decode().split("\n"):
        yield line


async def test_sse_encode_decode_round_trip() -> None:
    frames = [
        sse.encode(schemas.TokenEvent(token="a\nb", index=0)),
        sse.encode(schemas.DoneEvent(total_tokens=1, duration_ms=3)),
        sse.encode(sse.DONE),
    ]
    events = [e async for e in sse.decode(_lines(frames))]
    assert events[0] == {"token": "a\nb", "index": 0}
    assert events[1]["done"] is True and events[1]["total_tokens"] == 1
    assert events[2] == sse.DONE
