"""llama.cpp itself, through llama-cpp-python (the optional extra `quantkit[llamacpp]`).

- `quantize`: llama.cpp's own model quantizer, for the file types quantkit does not
  encode (IQ*), with quantkit's imatrix handed over in memory.
- `load`: llama.cpp's runtime on CPU, for `verify` (logits of every position).
- `model_params` / `open_llama`: the one way any code here (and the tests) loads a model.

Extra buffer types are off unless QUANTKIT_LLAMACPP_EXTRA_BUFTS=1: on CPUs with AMX,
llama.cpp repacks quantized weights into its "AMX" buffer type and crashes in
llama_decode (llama-cpp-python 0.3.36; see docs/reliability.md). The quantizer and the
verify runtime run in a child process, so a native crash there is one line and an exit
code, not a dead quantkit.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

from quantkit import output
from quantkit.errors import InputError, OptionError, QuantkitError

INSTALL = "pip install 'quantkit[llamacpp]' (builds llama.cpp: about 17 minutes on 2 cores)"
# llama.cpp refuses these without an importance matrix (src/llama-quant.cpp, tensor_requires_imatrix).
NEED_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S"}
EXTRA_BUFTS_ENV = "QUANTKIT_LLAMACPP_EXTRA_BUFTS"
LOG_ENV = "LLAMA_LOG"  # set to 1: llama.cpp's own log goes to stderr


def lib():
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"llama-cpp-python is not installed; {INSTALL}") from None
    return llama_cpp


def extra_bufts() -> bool:
    """Whether llama.cpp may repack weights into extra buffer types (AMX, CPU_REPACK): off by default."""
    return os.environ.get(EXTRA_BUFTS_ENV, "") == "1"


def model_params(**fields):
    """llama_model_default_params() with quantkit's settings (extra buffer types off) and `fields`."""
    llama_cpp = lib()
    p = llama_cpp.llama_model_default_params()
    p.use_extra_bufts = extra_bufts()
    for k, v in fields.items():
        setattr(p, k, v)
    return p


def open_llama(path: Path, **kw):
    """llama_cpp.Llama on `path` with model_params(): Llama() takes no use_extra_bufts, so its call of
    llama_model_default_params is pointed at ours while it loads."""
    llama_cpp = lib()
    low = llama_cpp.llama_cpp
    real = low.llama_model_default_params
    low.llama_model_default_params = model_params
    try:
        return llama_cpp.Llama(model_path=str(path), **kw)
    finally:
        low.llama_model_default_params = real


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to the C-level stderr; keep it off the user's terminal (unless LLAMA_LOG=1)."""
    if os.environ.get(LOG_ENV) == "1":
        yield
        return
    fd = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def crashed(what: str, exitcode: int | None) -> QuantkitError:
    """A llama.cpp child process that died: one line with the signal and what to try."""
    if exitcode is not None and exitcode < 0:
        try:
            how = signal.Signals(-exitcode).name
        except ValueError:
            how = f"signal {-exitcode}"
    else:
        how = f"exit code {exitcode}"
    hint = (f"; {EXTRA_BUFTS_ENV}=1 is set, unset it" if extra_bufts() else "") + f"; set {LOG_ENV}=1 to see llama.cpp's log"
    return QuantkitError(f"llama.cpp crashed ({how}) while {what}{hint}")


def _child(*args: str) -> subprocess.Popen:
    """This module run as a child process (`python -m quantkit.backends.gguf.llamacpp ARGS`): a plain
    subprocess, not multiprocessing, so the user's own __main__ is never imported again there.
    Frames go over its stdin and stdout."""
    p = subprocess.Popen([sys.executable, "-m", "quantkit.backends.gguf.llamacpp", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    _RUNNING.add(p)
    return p


_RUNNING: set[subprocess.Popen] = set()
output.CHILDREN.append(lambda: [p.kill() for p in list(_RUNNING)])  # quantkit's SIGTERM handler stops them


def _send(f, data: bytes) -> None:
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def _read_exact(f, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            raise EOFError
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _recv(f) -> bytes:
    (n,) = struct.unpack("<Q", _read_exact(f, 8))
    return _read_exact(f, n)


def file_type_id(name: str) -> int:
    try:
        return int(gguf.LlamaFileType["MOSTLY_" + name])
    except KeyError:
        known = sorted(t.name[len("MOSTLY_"):] for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_"))
        raise OptionError("type", name, f"llama.cpp has no such file type; known: {', '.join(known)}") from None


def check_types(types: list[str], has_imatrix: bool) -> None:
    lib()
    for t in types:
        file_type_id(t)
        if t in NEED_IMATRIX and not has_imatrix:
            raise OptionError("type", t, "needs an importance matrix in llama.cpp; add {imatrix} (or {imatrix_file=FILE})")


def quantize(src: Path, dst: Path, file_type: str, imatrix=None) -> None:
    """llama.cpp's `llama_model_quantize` from a F16/BF16/F32 GGUF, in a child process."""
    lib()
    ftype = file_type_id(file_type)
    p = _child("quantize", str(src), str(dst), str(ftype))
    try:
        try:
            names = list(imatrix.entries) if imatrix is not None else []
            _send(p.stdin, json.dumps(names).encode())
            for name in names:
                _send(p.stdin, np.ascontiguousarray(imatrix.weights(name), dtype=np.float32).tobytes())
            said = _recv(p.stdout)
        except (EOFError, OSError):  # the child ended without a word: it crashed
            said = None
        p.wait()
    finally:  # Ctrl-C here must not leave llama.cpp running on every core
        _stop(p, 0)
    if p.returncode == 0 and said == b"ok":
        return
    if said:
        raise QuantkitError(f"llama.cpp's quantizer failed on {file_type}: {said.decode(errors='replace')}; "
                            f"set {LOG_ENV}=1 to see its log")
    raise crashed(f"quantizing {Path(src).name} to {file_type}", p.returncode)


def _stop(p: subprocess.Popen, wait: float) -> None:
    """Give a child `wait` seconds to end, then kill it if it is still there."""
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for f in (p.stdin, p.stdout):
            with contextlib.suppress(OSError):
                f.close()
        _RUNNING.discard(p)


def _quantize_child(inp, out, src: str, dst: str, ftype: int) -> None:
    """In the child: llama_model_quantize with the imatrix read from the parent; "ok" or one line back."""
    llama_cpp = lib()
    names = json.loads(_recv(inp))
    entries = {name: np.frombuffer(_recv(inp), dtype=np.float32) for name in names}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    keep = []
    if names:
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
        for i, (name, v) in enumerate(entries.items()):
            keep.append(v)
            arr[i].name = name.encode()
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(entries)].name = None
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr)
    with quiet_stderr():
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    _send(out, b"ok" if rc == 0 else f"llama_model_quantize returned {rc}".encode())


def tensor_types(path: Path) -> dict[str, str]:
    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def load(path: Path, n_ctx: int = 512, logits_all: bool = True, **kw):
    """A llama.cpp model on CPU (llama_cpp.Llama), quiet, in this process (tests, generation)."""
    kw = {"verbose": os.environ.get(LOG_ENV) == "1", "n_threads": os.cpu_count() or 1, "n_gpu_layers": 0, **kw}
    with quiet_stderr():
        return open_llama(path, n_ctx=n_ctx, logits_all=logits_all, **kw)


class Runtime:
    """llama.cpp's runtime in a child process: token ids in, logits of every position out.
    A native crash in llama.cpp becomes one QuantkitError naming the signal."""

    def __init__(self, path: Path, n_ctx: int = 4096):
        lib()
        self.path = Path(path)
        self._proc = _child("serve", str(path), str(n_ctx))
        self.n_ctx, self.n_vocab = (int(x) for x in self._recv(f"loading {self.path.name}").split())

    def _recv(self, what: str) -> bytes:
        try:
            raw = _recv(self._proc.stdout)
        except (EOFError, OSError):
            _stop(self._proc, 5)
            raise crashed(what, self._proc.returncode) from None
        if raw.startswith(_ERROR):
            _stop(self._proc, 5)
            raise QuantkitError(f"llama.cpp failed while {what}: {raw[len(_ERROR):].decode(errors='replace')}")
        return raw

    def logits(self, ids: list[int]) -> np.ndarray:
        what = f"scoring {self.path.name}"
        try:
            _send(self._proc.stdin, np.asarray(ids, dtype=np.int32).tobytes())
        except OSError:  # the child is gone (BrokenPipeError)
            _stop(self._proc, 5)
            raise crashed(what, self._proc.returncode) from None
        raw = self._recv(what)
        return np.frombuffer(raw, dtype=np.float32).reshape(len(ids), self.n_vocab)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # the child sees EOF and ends
        _stop(self._proc, 5)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_ERROR = b"\0error "  # first bytes of a frame that is an error, not numbers


def _serve(inp, out, path: str, n_ctx: int) -> None:
    """In the child: load once, then answer token ids with logits until the parent hangs up."""
    llm = load(Path(path), n_ctx=n_ctx)
    _send(out, f"{llm.n_ctx()} {llm.n_vocab()}".encode())
    while True:
        try:
            raw = _recv(inp)
        except EOFError:
            return
        ids = np.frombuffer(raw, dtype=np.int32).tolist()
        llm.reset()
        llm.eval(ids)
        _send(out, np.ascontiguousarray(llm.scores[: len(ids)], dtype=np.float32).tobytes())


def _child_main(argv: list[str]) -> None:
    """The child's entry: frames on private copies of stdin/stdout; fd 1 then points at stderr, so
    nothing llama.cpp prints can break a frame. A Python error goes back as one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    try:
        if argv[0] == "quantize":
            _quantize_child(inp, out, argv[1], argv[2], int(argv[3]))
        else:
            _serve(inp, out, argv[1], int(argv[2]))
    except Exception as e:  # noqa: BLE001  (one line to the parent, not a child's traceback)
        with contextlib.suppress(OSError):
            _send(out, (_ERROR if argv[0] == "serve" else b"") + " ".join(f"{type(e).__name__}: {e}".split()).encode())
        os._exit(1)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
