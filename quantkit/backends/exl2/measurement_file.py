"""measurement.json: written by every run, read back by `measurement` (quantkit's or exllamav2's).

Torch-free: `check` reads a reused one and checks it against the model before any work.
"""
from __future__ import annotations

import json
from pathlib import Path

from quantkit import __version__, output
from quantkit.backends.exl2.shapes import ModelShapes, block_keys, mix_of
from quantkit.errors import OptionError

MEASUREMENT = "measurement.json"


def read_measurement(f: Path, shapes: ModelShapes) -> dict:
    """The measurement table of `f`, every option's bit count checked against `shapes`."""
    try:
        data = json.loads(f.read_text())["measurement"]
    except FileNotFoundError:
        raise OptionError("measurement", str(f), "no such file; pass the measurement.json of an earlier exl2 run") from None
    except OSError as e:
        raise OptionError("measurement", str(f), f"cannot read it ({e.strerror}); pass the measurement.json of an earlier exl2 run") from None
    except (ValueError, KeyError, TypeError):
        raise OptionError("measurement", str(f), "not an EXL2 measurement.json (no 'measurement' table); pass one quantkit or exllamav2 wrote") from None
    for key, layer, block in block_keys(shapes.layers):
        opts = data.get(key) if isinstance(data, dict) else None
        try:
            ok = bool(opts) and all(
                int(o["total_bits"]) == shapes.bits(layer, block, list(mix_of(o, block).values()))
                and 0 < float(o["accuracy"]) <= 1 for o in opts)
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise OptionError("measurement", str(f), f"{key} does not match this model's shapes; "
                              "it was measured on another model, so run without {measurement}")
    return data


def has_delta_errors(measurement: dict) -> bool:
    """Whether every option carries quantkit's delta error (exllamav2's measurements do not)."""
    return all("delta_error" in o for v in measurement.values() for o in v)


def write_measurement(path: Path, measurement: dict, layers: int) -> None:
    output.write_json(path, {"measurement": measurement, "last_module_idx": 2 * layers + 1,
                             "quantkit": {"version": __version__}})
