"""Source checkpoints: find them (folder, Hub id, built-in) and check them before any work."""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from quantkit import formats
from quantkit.arch import ARCHITECTURES
from quantkit.errors import SourceError
from quantkit.hub_ids import looks_like_repo_id
from quantkit.stio import FLOAT_DTYPES, Header, read_header

# Files carried from the source into every artifact (when present).
CARRIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)

BUILTIN_PREFIX = "builtin:"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "README.md"]


@dataclass
class Source:
    path: Path
    spec: str  # what the user typed
    hub_id: str | None
    config: dict
    weight_files: list[Path]  # safetensors shards, in index order
    headers: dict[str, Header] = field(default_factory=dict)
    dtype_counts: Counter = field(default_factory=Counter)
    notices: list[str] = field(default_factory=list)
    upstream_id: str | None = None  # the Hub id this checkpoint is published under, when known (cards' base_model)

    @property
    def name(self) -> str:
        return (self.hub_id or self.path.name).split("/")[-1]

    @property
    def architecture(self) -> str:
        return self.config["architectures"][0]

    @property
    def weight_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.weight_files)

    def carried_files(self) -> list[Path]:
        return [self.path / n for n in CARRIED_FILES if (self.path / n).is_file()]


def resolve(spec: str, allow_pickle: bool = False) -> Source:
    """Turn MODEL as typed into a checked Source, or raise SourceError with the fix."""
    hub_id = upstream = None
    if spec.startswith(BUILTIN_PREFIX):
        from quantkit import fixtures

        path = fixtures.builtin(spec[len(BUILTIN_PREFIX):])
        upstream = fixtures.UPSTREAM_IDS.get(spec[len(BUILTIN_PREFIX):])
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if looks_like_repo_id(spec) and not spec.startswith((".", "/", "~")):
                path, hub_id = _download(spec), spec
            else:
                raise SourceError(f"{spec}: no such folder; pass a local checkpoint folder or a Hub id like org/name")
    if not path.is_dir():
        raise SourceError(f"{spec} is a file; pass the checkpoint folder that holds config.json")
    config = _read_config(path)
    files, weight_map = _weight_files(path, allow_pickle)
    source = Source(path=path.resolve(), spec=spec, hub_id=hub_id, config=config, weight_files=files,
                    upstream_id=hub_id or upstream)
    source.headers = {f.name: read_header(f) for f in files}
    if weight_map is not None:
        _check_index(weight_map, source.headers)
    _check_tensors(source)
    _check_against_config(source)
    return source


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise SourceError(
            f"{repo_id} is not a local folder and the Hugging Face Hub cannot be reached; "
            "download it where you are online, then pass the folder"
        ) from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise SourceError(
            f"the Hub refused {repo_id} (HTTP {status}); check the id, and for a gated or private "
            "model run `hf auth login` or set HF_TOKEN"
        ) from None
    except OSError as e:
        raise SourceError(f"could not download {repo_id} from the Hub ({e.__class__.__name__}); check the network") from None


def read_config(path: Path) -> dict:
    """config.json as a dict, or one SourceError naming what is wrong with it."""
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise SourceError(f"{path} has no config.json; pass a Hugging Face checkpoint folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{cfg_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); fix or re-download it") from None
    if not isinstance(config, dict):
        raise SourceError(f"{cfg_path} is not a JSON object; fix or re-download it")
    return config


def _read_config(path: Path) -> dict:
    config = read_config(path)
    cfg_path = path / "config.json"
    archs = config.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise SourceError(f"{cfg_path}: \"architectures\" must be a list of names, like [\"LlamaForCausalLM\"]; fix or re-download it")
    if not archs:
        raise SourceError(f"{cfg_path} names no architecture; add \"architectures\": [\"LlamaForCausalLM\"] or re-save the model")
    if archs[0] not in ARCHITECTURES:
        raise SourceError(
            f"architecture {archs[0]} is not supported yet; quantkit converts "
            + ", ".join(ARCHITECTURES)
        )
    qc = config.get("quantization_config")
    if qc:
        method = qc.get("quant_method", "unknown")
        fmt = qc.get("format")
        raise SourceError(
            f"{path.name} is already quantized ({method}{', ' + fmt if fmt else ''}); "
            "pass the original BF16 checkpoint"
        )
    return config


def check_artifact(path: Path, allow_pickle: bool = False) -> None:
    """A folder verify reads gets the checks a conversion source gets, but for its architecture and
    dtypes (it is quantized): a readable config.json, complete safetensors files consistent with
    their index, and no pickle weights unless allowed."""
    config = read_config(path)
    if (config.get("quantization_config") or {}).get("quant_method") == "exl2":
        # exllamav2 reads every *.safetensors and no index (its -cf output may carry the source's)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise SourceError(f"{path} has no weights (no *.safetensors); pass a complete EXL2 folder")
        for f in files:
            read_header(f)
        return
    files, weight_map = _weight_files(path, allow_pickle, convert_pickle=False, shards_ok=True)
    headers = {f.name: read_header(f) for f in files if f.suffix == ".safetensors"}
    if weight_map is not None:
        _check_index(weight_map, headers)


def _weight_files(path: Path, allow_pickle: bool, convert_pickle: bool = True,
                  shards_ok: bool = False) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors weight files, and the shard index's weight map when there is one.
    `shards_ok`: several files without an index (EXL2 writes them so)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SourceError(f"{index.name} is not a valid shard index; re-download it") from None
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise SourceError(
                f"{index.name} lists {missing[0]}, which is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; download every shard"
            )
        return [path / n for n in names], weight_map
    single = path / "model.safetensors"
    if single.is_file():
        return [single], None
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        if len(shards) > 1 and not shards_ok:
            raise SourceError(f"{path} has {len(shards)} safetensors files but no model.safetensors.index.json; add the index")
        return shards, None
    pickles = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt")) + sorted(path.glob("*.pth"))
    if pickles:
        if not allow_pickle:
            raise SourceError(
                f"{path.name} has only pickle weights ({pickles[0].name}), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust the source"
            )
        if not convert_pickle:
            return pickles, None
        from quantkit import pickled

        return pickled.to_safetensors(path, pickles), None
    raise SourceError(f"{path} has no weights (no *.safetensors); pass a complete checkpoint folder")


def _check_index(weight_map: dict[str, str], headers: dict[str, Header]) -> None:
    index = "model.safetensors.index.json"
    by_file: dict[str, set[str]] = {}
    for tensor, fname in weight_map.items():
        by_file.setdefault(fname, set()).add(tensor)
    for fname, h in headers.items():
        have = set(h.tensors)
        absent = by_file[fname] - have
        if absent:
            raise SourceError(
                f"{index} says {fname} holds {sorted(absent)[0]}, but it does not; "
                "the index and the shards come from different downloads: re-download them together"
            )
        extra = have - set(weight_map)
        if extra:
            raise SourceError(f"{fname} holds {sorted(extra)[0]}, which {index} does not list; re-download the index")


def _check_against_config(source: Source) -> None:
    """Every tensor config.json implies is there with its shape, before any work: a checkpoint whose
    weights and config disagree would otherwise convert into an artifact that does not load."""
    from quantkit import arch

    expected = arch.tensors(source.config)
    have = {t.name: t for h in source.headers.values() for t in h.tensors.values()}
    layers = source.config["num_hidden_layers"]
    for name in sorted(have):
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m and int(m.group(1)) >= layers:
            raise SourceError(
                f"{source.path.name} holds {name}, but its config.json says num_hidden_layers {layers}; "
                "the weights and config.json come from different models: re-download them together"
            )
    for spec in expected:
        got = have.get(spec.name)
        if got is None:
            raise SourceError(
                f"{source.path.name} has no tensor {spec.name}, which its config.json implies; "
                "the weights and config.json come from different models: re-download them together"
            )
        if tuple(got.shape) != tuple(spec.shape):
            raise SourceError(
                f"{source.path.name}: {spec.name} has shape {list(got.shape)}, but config.json implies "
                f"{list(spec.shape)}; the weights and config.json come from different models: re-download them together"
            )


def _check_tensors(source: Source) -> None:
    for fname, h in source.headers.items():
        for t in h.tensors.values():
            source.dtype_counts[t.dtype] += 1
            fmt = formats.quantized_tensor_format(t.name, t.dtype)
            if fmt:
                raise SourceError(
                    f"{source.path.name} is already quantized ({fmt}: tensor {t.name} in {fname}); "
                    "pass the original BF16 checkpoint"
                )
    floats = {d for d in source.dtype_counts if d in FLOAT_DTYPES}
    if floats - {"BF16"}:
        source.notices.append(
            f"source weights are {'/'.join(sorted(floats))}, not BF16; they are read as they are "
            "and tensors kept unquantized are written in their stored dtype"
        )
