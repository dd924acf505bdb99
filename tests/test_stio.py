"""The streaming safetensors reader and writer agree with the safetensors library."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from quantkit.errors import SourceError
from quantkit.stio import HashingReader, PlannedTensor, StreamWriter, read_header


def sample():
    g = torch.Generator().manual_seed(1)
    return {
        "a.weight": torch.randn(300, 70, generator=g).to(torch.bfloat16),
        "b.bias": torch.randn(33, generator=g),
        "c.idx": torch.arange(12, dtype=torch.int32).reshape(3, 4),
        "d.fp8": torch.randn(8, 16, generator=g).to(torch.float8_e4m3fn),
        "e.empty": torch.zeros(0, 5, dtype=torch.float16),
    }


def test_reader_reads_library_files_and_hashes_them(tmp_path, monkeypatch):
    import quantkit.stio

    monkeypatch.setattr(quantkit.stio, "CHUNK", 1000)  # exercise chunked copies
    f = tmp_path / "x.safetensors"
    tensors = sample()
    save_file(tensors, f, metadata={"format": "pt"})
    h = read_header(f)
    assert h.metadata == {"format": "pt"}
    r = HashingReader(h)
    for info in h.ordered()[:2]:
        assert torch.equal(r.tensor(info).view(torch.uint8), tensors[info.name].view(torch.uint8))
    info = h.ordered()[2]
    raw = b"".join(bytes(c) for c in r.chunks(info))
    assert raw == tensors[info.name].contiguous().view(torch.uint8).numpy().tobytes()
    assert r.finish() == hashlib.sha256(f.read_bytes()).hexdigest()  # skipped tensors are hashed too


def test_writer_output_loads_in_library(tmp_path):
    f = tmp_path / "y.safetensors"
    tensors = sample()
    w = StreamWriter(f, [PlannedTensor(k, {torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32",
                                           torch.float8_e4m3fn: "F8_E4M3", torch.float16: "F16"}[v.dtype], tuple(v.shape))
                         for k, v in tensors.items()])
    for k, v in tensors.items():
        w.write(k, v)
    digest = w.close()
    assert digest == hashlib.sha256(f.read_bytes()).hexdigest()
    back = load_file(f)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].view(torch.uint8), v.view(torch.uint8))


def test_writer_refuses_wrong_order_and_missing(tmp_path):
    w = StreamWriter(tmp_path / "z.safetensors", [PlannedTensor("a", "F32", (2,)), PlannedTensor("b", "F32", (2,))])
    with pytest.raises(ValueError):
        w.write("b", torch.zeros(2))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError):
        w.close()
    w.abort()


@pytest.mark.parametrize("damage", ["empty", "huge_header", "short_data", "bad_dtype"])
def test_damaged_headers_are_named(tmp_path, damage):
    f = tmp_path / "d.safetensors"
    save_file(sample(), f)
    data = f.read_bytes()
    if damage == "empty":
        data = b""
    elif damage == "huge_header":
        data = (10**12).to_bytes(8, "little") + data[8:]
    elif damage == "short_data":
        data = data[:-1]
    elif damage == "bad_dtype":
        data = data.replace(b'"BF16"', b'"Q4_X"')
    f.write_bytes(data)
    with pytest.raises(SourceError, match="d.safetensors"):
        read_header(f)
