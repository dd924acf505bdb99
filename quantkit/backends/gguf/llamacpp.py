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
import multiprocessing
import os
import signal
from pathlib import Path

import gguf
import numpy as np

from quantkit.errors import InputError, QuantkitError

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


def _spawn():
    return multiprocessing.get_context("spawn")


def file_type_id(name: str) -> int:
    try:
        return int(gguf.LlamaFileType["MOSTLY_" + name])
    except KeyError:
        known = sorted(t.name[len("MOSTLY_"):] for t in gguf.LlamaFileType if t.name.startswith("MOSTLY_"))
        raise InputError(f"--type {name}: llama.cpp has no such file type; known: {', '.join(known)}") from None


def check_types(types: list[str], has_imatrix: bool) -> None:
    lib()
    for t in types:
        file_type_id(t)
        if t in NEED_IMATRIX and not has_imatrix:
            raise InputError(f"--type {t} needs an importance matrix in llama.cpp; add --imatrix (or --imatrix-file FILE)")


def quantize(src: Path, dst: Path, file_type: str, imatrix=None) -> None:
    """llama.cpp's `llama_model_quantize` from a F16/BF16/F32 GGUF, in a child process."""
    lib()
    ftype = file_type_id(file_type)
    entries = {name: np.ascontiguousarray(imatrix.weights(name), dtype=np.float32) for name in imatrix.entries} if imatrix is not None else None
    conn, child = _spawn().Pipe(duplex=False)
    p = _spawn().Process(target=_quantize_child, args=(child, str(src), str(dst), ftype, entries), name="quantkit-llama-quantize")
    p.start()
    child.close()
    try:
        said = conn.recv_bytes().decode(errors="replace") if conn.poll(None) else ""
    except (EOFError, OSError):
        said = ""
    finally:
        _stop(p)
    if p.exitcode == 0:
        return
    if said:
        raise QuantkitError(f"llama.cpp's quantizer failed on {file_type}: {said}; set {LOG_ENV}=1 to see its log")
    raise crashed(f"quantizing {Path(src).name} to {file_type}", p.exitcode)


def _stop(p, wait: float | None = None) -> None:
    """Wait for a child (or `wait` seconds), and kill it if it is still there: a Ctrl-C in quantkit
    must not leave llama.cpp running on every core."""
    try:
        p.join(wait)
    finally:
        if p.is_alive():
            p.kill()
            p.join()


def _quantize_child(conn, src: str, dst: str, ftype: int, entries: dict | None) -> None:
    """Runs in the child: llama_model_quantize, with one line back to the parent if it fails."""
    try:
        llama_cpp = lib()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = os.cpu_count() or 1
        keep = []
        if entries is not None:
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
        if rc:
            conn.send_bytes(f"llama_model_quantize returned {rc}".encode())
            os._exit(1)
    except Exception as e:  # noqa: BLE001  (one line to the parent, not a child's traceback)
        conn.send_bytes(" ".join(f"{type(e).__name__}: {e}".split()).encode())
        os._exit(1)
    os._exit(0)


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
        self._conn, child = _spawn().Pipe()
        self._proc = _spawn().Process(target=_serve, args=(child, str(path), n_ctx), daemon=True,
                                      name="quantkit-llama-runtime")
        self._proc.start()
        child.close()
        self.n_ctx, self.n_vocab = (int(x) for x in self._recv(f"loading {self.path.name}").split())

    def _recv(self, what: str) -> bytes:
        try:
            raw = self._conn.recv_bytes()
        except (EOFError, OSError):
            _stop(self._proc, 5)
            raise crashed(what, self._proc.exitcode) from None
        if raw.startswith(_ERROR):
            _stop(self._proc, 5)
            raise QuantkitError(f"llama.cpp failed while {what}: {raw[len(_ERROR):].decode(errors='replace')}")
        return raw

    def logits(self, ids: list[int]) -> np.ndarray:
        what = f"scoring {self.path.name}"
        try:
            self._conn.send_bytes(np.asarray(ids, dtype=np.int32).tobytes())
        except OSError:  # the child is gone (BrokenPipeError)
            _stop(self._proc, 5)
            raise crashed(what, self._proc.exitcode) from None
        raw = self._recv(what)
        return np.frombuffer(raw, dtype=np.float32).reshape(len(ids), self.n_vocab)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()
        _stop(self._proc, 5)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_ERROR = b"\0error "  # first bytes of a message that is an error, not numbers


def _serve(conn, path: str, n_ctx: int) -> None:
    """Runs in the child: load once, then answer token ids with logits until the parent hangs up."""
    try:
        llm = load(Path(path), n_ctx=n_ctx)
        conn.send_bytes(f"{llm.n_ctx()} {llm.n_vocab()}".encode())
        while True:
            try:
                raw = conn.recv_bytes()
            except (EOFError, OSError):
                return
            ids = np.frombuffer(raw, dtype=np.int32).tolist()
            llm.reset()
            llm.eval(ids)
            conn.send_bytes(np.ascontiguousarray(llm.scores[: len(ids)], dtype=np.float32).tobytes())
    except Exception as e:  # noqa: BLE001  (one line to the parent, not a child's traceback)
        with contextlib.suppress(OSError):
            conn.send_bytes(_ERROR + " ".join(f"{type(e).__name__}: {e}".split()).encode())
