"""The `gguf` backend: its options, what check decides, and run.

One pass over the source writes every requested file type (stream.py). Types quantkit does
not encode itself (IQ*) go to llama.cpp's own quantizer with `engine: llamacpp` (needs
`quantkit[llamacpp]`), from a BF16 GGUF that quantkit writes in the same pass.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import Field, field_validator

from quantkit.backends.base import Backend, BackendResult, Options, Plan, Progress, calibration_field
from quantkit.backends.gguf.describe import GGUFDescription
from quantkit.errors import OptionError
from quantkit.libs import quiet_gguf

if TYPE_CHECKING:
    from quantkit.backends.gguf.imatrix import Calibration, Imatrix
    from quantkit.backends.gguf.vocab import Bos
    from quantkit.source import Source

# what an imatrix leaves unchanged
UNWEIGHTED = {"F16", "BF16", "Q8_0"}


def type_list(spec: str) -> list[str]:
    """`Q4_K_M,q8_0` -> ["Q4_K_M", "Q8_0"]: upper-cased, duplicates dropped."""
    return list(dict.fromkeys(t.strip().upper() for t in spec.split(",") if t.strip()))


class GGUFOptions(Options):
    type: str = Field("Q4_K_M", json_schema_extra={"short": "-t"},
                      description="Comma-separated GGUF file types: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, "
                                  "Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K (IQ* with --engine llamacpp). One pass writes them all.")
    imatrix: bool = Field(False, description="Compute an importance matrix from the calibration text (llama.cpp's "
                                             "semantics) and quantize with it; saved as imatrix.gguf.")
    imatrix_file: str | None = Field(None, json_schema_extra={"path": True}, description="Quantize with this imatrix (GGUF imatrix from quantkit or llama-imatrix).")
    imatrix_chunks: int = Field(64, ge=1, description="512-token chunks of calibration text for --imatrix.")
    calibration: str | None = calibration_field()
    engine: Literal["quantkit", "llamacpp"] = Field(
        "quantkit", description="quantkit (our encoders) | llamacpp (llama.cpp's quantizer for the types we do not "
                                "encode, e.g. IQ4_XS; needs quantkit[llamacpp]).")

    @field_validator("type", mode="before")
    @classmethod
    def _join(cls, v):
        """A recipe may list the types."""
        return ",".join(str(t) for t in v) if isinstance(v, (list, tuple)) else v

    @field_validator("type")
    @classmethod
    def _types(cls, v: str) -> str:
        types = type_list(v)
        if not types:
            from quantkit.backends.gguf.mix import FILE_TYPES

            raise ValueError("is empty; pass one or more of " + ", ".join(FILE_TYPES))
        return ",".join(types)


@dataclass(kw_only=True)
class GGUFPlan(Plan):
    types: list[str]  # every file type asked for, in order
    ours: list[str]  # encoded by quantkit
    theirs: list[str]  # quantized by llama.cpp from a BF16 file of the same pass
    imatrix_file: Path | None = None  # the imatrix to quantize with, when given
    calibration: Calibration | None = None  # the text to compute the imatrix from, when it is computed
    bos: Bos | None = None  # whether the GGUF's vocab adds BOS: llama-imatrix's chunks start with it then

    @property
    def uses_imatrix(self) -> bool:
        return self.imatrix_file is not None or self.calibration is not None


class _Written(NamedTuple):
    files: list  # stream.OutputFile, one per file of the artifact
    hashes: dict[str, str]  # file name -> sha256


class GGUF(GGUFDescription, Backend):
    """GGUF as llama.cpp and Ollama load it: quantkit's own converter and K-quant encoders, one pass for several types.

    Writes <model>-<TYPE>.gguf and an Ollama <model>-<TYPE>.Modelfile for each type into one folder.
    Tensors stream from the safetensors shards; memory holds one tensor at a time.
    """

    name = "gguf"
    Options = GGUFOptions
    methods = ("gguf",)
    examples = (
        "quantkit gguf builtin:smollm2 --type Q4_K_M,Q8_0",
        "quantkit gguf ./Llama-3.1-8B-Instruct --type Q4_K_M,Q5_K_M,Q6_K --imatrix",
        "quantkit gguf ./model --type IQ4_XS --engine llamacpp --imatrix",
    )

    def suffix(self) -> str:
        return "GGUF"

    def check(self, source: Source) -> GGUFPlan:
        """Everything that can be refused before work: types, imatrix file, architecture, rope,
        tokenizer. The metadata, vocabulary and Modelfile are built once here (cached) for their notices."""
        import gguf

        from quantkit.backends.gguf import convert, mix, modelfile, vocab
        from quantkit.backends.gguf.tensors import predicted_bytes

        o = self.options
        types = type_list(o.type)
        unknown = [t for t in types if t not in mix.FILE_TYPES]
        if unknown and o.engine != "llamacpp":
            raise OptionError("type", unknown[0],
                              f"quantkit encodes {', '.join(mix.FILE_TYPES)}; for other llama.cpp types (IQ*) "
                              "add {engine=llamacpp} (pip install 'quantkit[llamacpp]')")
        ours = [t for t in types if t in mix.FILE_TYPES]
        theirs = [t for t in types if t not in mix.FILE_TYPES]
        uses_imatrix = o.imatrix or o.imatrix_file is not None
        with quiet_gguf():
            hp = convert.hparams(source.config)
            w = gguf.GGUFWriter(None, hp.arch_name)
            notices = convert.add_metadata(w, source.config, source.name, 0)
            notices += vocab.add_vocab(w, source.path, hp.dims.vocab)
        notices += modelfile.modelfile(f"{source.name}.gguf", source.path, source.config).notices
        if theirs:
            from quantkit.backends.gguf import llamacpp

            llamacpp.check_types(theirs, uses_imatrix)
        if o.imatrix_file and not Path(o.imatrix_file).is_file():
            raise OptionError("imatrix_file", o.imatrix_file, "no such file; pass an imatrix written by quantkit or llama-imatrix")
        if uses_imatrix and set(ours) <= UNWEIGHTED and not theirs:
            notices.append("an imatrix changes nothing for F16, BF16 and Q8_0")
        calibration = bos = None
        if uses_imatrix and not o.imatrix_file:
            from quantkit.backends.gguf.imatrix import Calibration

            calibration = Calibration.load(o.calibration)
            # BOS at the start of each chunk exactly when the GGUF's tokenizer adds it, as llama-imatrix runs it
            bos = vocab.add_bos(source.path, hp.dims.vocab)
        return GGUFPlan(
            source=source,
            notices=list(dict.fromkeys(notices)),
            output_bytes=sum(predicted_bytes(source.config, t) for t in ours) + len(theirs) * source.weight_bytes + (64 << 20),
            types=types, ours=ours, theirs=theirs,
            imatrix_file=Path(o.imatrix_file) if o.imatrix_file else None,
            calibration=calibration, bos=bos,
        )

    def run(self, plan: GGUFPlan, staging: Path, progress: Progress) -> BackendResult:
        from quantkit import output
        from quantkit.backends.gguf import convert, modelfile, stream
        from quantkit.backends.gguf.tensors import tensor_types, type_counts

        source = plan.source
        with quiet_gguf():
            imx = self._imatrix(plan, staging)
            hp = convert.hparams(source.config)
            order = [t.name for f in source.weight_files for t in source.headers[f.name].ordered()]
            shapes = {t.name: t.shape for h in source.headers.values() for t in h.tensors.values()}
            planned = convert.plan(source.config, order, shapes)

            def output_file(file_type: str, folder: Path) -> stream.OutputFile:
                return stream.OutputFile(file_type, folder / f"{source.name}-{file_type}.gguf",
                                         tensor_types(file_type, planned, hp, imatrix=imx is not None))

            files = [output_file(t, staging) for t in plan.ours]
            tmp = None
            if plan.theirs:  # llama.cpp quantizes from a lossless GGUF written in the same pass
                tmp = Path(tempfile.mkdtemp(prefix=".bf16-", dir=staging))
                files.append(output_file("BF16", tmp))
            written = stream.write(source, planned, files, imx, progress)
            done = _Written(files, dict(written.file_hashes))
            if plan.theirs:
                done = self._llamacpp(plan, staging, done, imx)
                shutil.rmtree(tmp, ignore_errors=True)
        for f in done.files:
            text = modelfile.modelfile(f.path.name, source.path, source.config).text
            output.write_text_atomic(staging / (f.path.stem + ".Modelfile"), text)
        return BackendResult(
            method="gguf",
            parameters={
                "types": plan.types,
                "engine": {t: ("quantkit" if t in plan.ours else "llama.cpp") for t in plan.types},
                "imatrix": None if imx is None else {"file": imx.origin, "chunks": imx.chunks},
                "files": {f.path.name: {"file_type": f.file_type, "tensor_types": type_counts(f.types)} for f in done.files},
                "architecture": hp.arch_name,
                "notices": plan.notices,
            },
            file_hashes=done.hashes,
            source_hashes=written.source_hashes,
            format="gguf",
        )

    def _imatrix(self, plan: GGUFPlan, staging: Path) -> Imatrix | None:
        """The imatrix given, or computed from the calibration text and saved as imatrix.gguf."""
        if not plan.uses_imatrix:
            return None
        from quantkit.backends.gguf import imatrix

        if plan.imatrix_file is not None:
            return imatrix.load(plan.imatrix_file)
        imx = imatrix.compute(plan.source.path, plan.calibration, self.options.imatrix_chunks, bos=plan.bos)
        imatrix.save(imx, staging / "imatrix.gguf")
        return imx

    @staticmethod
    def _llamacpp(plan: GGUFPlan, staging: Path, done: _Written, imx: Imatrix | None) -> _Written:
        """llama.cpp's quantizer from the BF16 file of the pass (the last one) for its types; the
        BF16 file itself is not part of the artifact."""
        from quantkit.backends.gguf import llamacpp, stream

        bf16 = done.files[-1].path
        files = list(done.files)
        for t in plan.theirs:
            out = staging / f"{plan.source.name}-{t}.gguf"
            llamacpp.quantize(bf16, out, t, imx)
            files.append(stream.OutputFile(t, out, llamacpp.tensor_types(out)))
        return _Written([f for f in files if f.path.parent == staging],
                        {k: v for k, v in done.hashes.items() if (staging / k).exists()})
