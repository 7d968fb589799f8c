"""The record format and key scheme (no Mooncake needed)."""

from __future__ import annotations

import re

import pytest
import torch
from dspark_trainer.transport.record import (
    HEADER_BYTES,
    FieldInfo,
    RecordFormatError,
    RecordInfo,
    decode_header,
    encode_header,
    make_base_key,
    minutes_regex,
    parse_base_key,
    record_keys,
    request_regex,
    tensor_from_value,
    validate_request_id,
)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_header_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    header = encode_header(dtype, shape)
    assert len(header) == HEADER_BYTES
    got_dtype, got_shape, nbytes = decode_header(header)
    assert (got_dtype, got_shape) == (dtype, shape)
    assert nbytes == torch.empty(shape, dtype=dtype).nbytes


def test_value_is_self_describing() -> None:
    t = torch.randn(5, 12).to(torch.bfloat16)
    value = torch.cat([torch.frombuffer(bytearray(encode_header(t.dtype, t.shape)), dtype=torch.uint8),
                       t.view(torch.uint8).flatten()])
    back = tensor_from_value(value)
    assert back.dtype == torch.bfloat16 and back.shape == (5, 12)
    assert torch.equal(back, t)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x09\x00" + b[6:], "version"),
        (lambda b: b[:6] + b"\x63\x00" + b[8:], "dtype code"),
        (lambda b: b[:56] + (12345).to_bytes(8, "little"), "payload bytes"),
        (lambda b: b[:10], "too short"),
    ],
)
def test_corrupt_headers_are_refused(mutate: object, message: str) -> None:
    header = encode_header(torch.bfloat16, (4, 8))
    with pytest.raises(RecordFormatError, match=message):
        decode_header(mutate(header))  # type: ignore[operator]


def test_keys_and_regexes() -> None:
    base = make_base_key("rank0-17", nonce="abc123", now=120.0)
    assert base == "dspark/2/rank0-17/abc123"
    assert parse_base_key(base) == (2, "rank0-17", "abc123")
    assert record_keys(base) == [f"{base}/hidden", f"{base}/last_hidden"]
    assert re.match(request_regex("rank0-17"), f"{base}/hidden")
    assert not re.match(request_regex("rank0-1"), f"{base}/hidden")
    assert re.match(minutes_regex([1, 2]), f"{base}/hidden")
    assert not re.match(minutes_regex([3, 20]), f"{base}/hidden")
    # request ids with regex metacharacters are escaped
    assert re.match(request_regex("a.b"), "dspark/5/a.b/n1/hidden")
    assert not re.match(request_regex("a.b"), "dspark/5/aXb/n1/hidden")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "a/b", 5, None])
def test_bad_request_ids(bad: object) -> None:
    with pytest.raises(ValueError, match="request_id"):
        validate_request_id(bad)


def test_record_info_json_round_trip() -> None:
    base = make_base_key("r1")
    info = RecordInfo(base, {"hidden": FieldInfo(f"{base}/hidden", (3, 8), torch.bfloat16),
                             "last_hidden": FieldInfo(f"{base}/last_hidden", (3, 4), torch.bfloat16)})
    data = info.to_json()
    assert data["records"]["hidden"] == {"key": f"{base}/hidden", "shape": [3, 8], "dtype": "bfloat16",
                                         "nbytes": HEADER_BYTES + 48}
    assert RecordInfo.from_json(data) == info
    data["records"]["hidden"]["nbytes"] = 1
    with pytest.raises(RecordFormatError, match="nbytes"):
        RecordInfo.from_json(data)
