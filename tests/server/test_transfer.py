"""Tests for server.transfer: exact half-precision round trips and zero-copy .npy views."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from server.transfer import (
    decode_array,
    decode_state,
    dtype_tag,
    encode_state,
    npy_view,
    received_tensors,
    record_arrays,
    wire_record,
)

SPECIAL = [0.0, -0.0, 1.0, -2.5, 1e-40, 3e38, float("inf"), float("-inf"), float("nan")]


def _state(dtype):
    torch.manual_seed(0)
    return {
        "a.weight": torch.cat([torch.randn(500), torch.tensor(SPECIAL)]).to(dtype),
        "b.bias": torch.randn(3, 7).to(dtype),
        "steps": torch.arange(4),
    }


def _bits(t):
    return t.view(torch.int16) if t.element_size() == 2 else t


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_round_trip_is_bit_exact(half):
    # Prepare
    state = _state(getattr(torch, half))
    tags = {k: dtype_tag(t.dtype, half) for k, t in state.items()}
    # Execute
    wire = encode_state(state, half)
    back = decode_state(wire, tags)
    # Assert
    assert wire["a.weight"].dtype == (np.int16 if half == "bfloat16" else np.float16)
    for k, t in state.items():
        assert back[k].dtype == t.dtype
        assert torch.equal(_bits(back[k]), _bits(t)), k
    assert np.shares_memory(_bits(back["a.weight"]).numpy(), wire["a.weight"])


def test_float32_encodes_to_the_rounded_half_exactly():
    state = _state(torch.float32)
    for half in ("float16", "bfloat16"):
        back = decode_state(
            encode_state(state, half),
            {k: dtype_tag(t.dtype, half) for k, t in state.items()},
        )
        want = state["a.weight"].to(getattr(torch, half))
        assert torch.equal(_bits(back["a.weight"]), _bits(want))
        assert torch.equal(back["steps"], state["steps"])


def test_full_precision_is_unchanged_and_shares_memory():
    state = _state(torch.float32)
    wire = encode_state(state, None)
    assert np.shares_memory(wire["b.bias"], state["b.bias"].numpy())
    back = decode_array("b.bias", wire["b.bias"], "float32")
    assert torch.equal(back, state["b.bias"])


def test_decode_rejects_a_wrong_wire_dtype():
    with pytest.raises(ValueError, match="int16"):
        decode_array("x", np.zeros(3, np.float16), "bfloat16")
    with pytest.raises(ValueError):
        decode_array("x", np.zeros(3, np.float32), "float16")


def test_unknown_half_mode_is_refused():
    with pytest.raises(ValueError, match="half-precision"):
        encode_state({"x": torch.zeros(2)}, "int8")


def test_npy_view_reads_flower_arrays_without_copy():
    # Prepare
    c = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    f = np.asfortranarray(c)
    bf = torch.randn(10).to(torch.bfloat16).view(torch.int16).numpy()
    record = ArrayRecord({"c": Array(c), "f": Array(f), "bf": Array(bf)})
    # Execute
    views = record_arrays(record)
    # Assert
    np.testing.assert_array_equal(views["c"], c)
    np.testing.assert_array_equal(views["f"], f)
    assert not views["c"].flags.writeable
    assert np.shares_memory(views["c"], np.frombuffer(record["c"].data, np.uint8))
    back = decode_array("bf", views["bf"], "bfloat16")
    assert torch.equal(back.view(torch.int16), torch.from_numpy(bf))


def test_npy_view_rejects_malformed_buffers():
    data = Array(np.zeros(8, np.float32)).data
    with pytest.raises(ValueError):
        npy_view(b"not an npy buffer at all")
    with pytest.raises(ValueError, match="size"):
        npy_view(data[:-4])


@pytest.mark.parametrize("half", [None, "float16", "bfloat16"])
def test_wire_record_is_what_flower_and_numpy_read(half):
    gen = torch.Generator().manual_seed(1)
    state = {
        "w": torch.randn(5, 3, generator=gen),
        "transposed": torch.randn(4, 6, generator=gen).t(),  # not contiguous
        "f64": torch.randn(3, generator=gen, dtype=torch.float64),
        "ints": torch.tensor([3, -4, 5], dtype=torch.int64),
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "special": torch.tensor(SPECIAL),
    }
    record = wire_record(state, half)
    back = received_tensors(record, half)
    for name, tensor in state.items():
        array = record[name]
        want = tensor
        if half is not None and tensor.is_floating_point():
            want = tensor.to(getattr(torch, half))
        assert back[name].dtype == want.dtype, name
        torch.testing.assert_close(back[name], want, rtol=0, atol=0, equal_nan=True)
        # Flower's own reader (np.load) and ours agree on the bytes
        np.testing.assert_array_equal(array.numpy(), npy_view(array.data))
        assert tuple(array.shape) == tuple(tensor.shape)
        if half is None:  # byte-identical to Flower's Array(ndarray) (np.save)
            assert array.data == Array(tensor.contiguous().numpy()).data
