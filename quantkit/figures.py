"""Verify figures as text, and the gates on them: the one place that formats a PPL ratio.

Every view of a verify result (the verify table, the artifact summary after a conversion,
inspect, the model card, the release report) takes its strings from here. Functions take a
VerifyResult, or its JSON form (a manifest's "verify", a release report's row); a row that
lacks a figure simply has no cell for it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from quantkit.errors import flag_name
from quantkit.manifest import VerifyResult

Result = VerifyResult | Mapping


class Gates(BaseModel):
    """Verify gates: a recipe's `gates:` and verify's --max-ppl-ratio / --max-kld."""

    model_config = ConfigDict(extra="forbid")
    max_ppl_ratio: float | None = Field(None, ge=0, allow_inf_nan=False,
                                        description="fail when PPL(quantized) / PPL(source) exceeds this")
    max_kld: float | None = Field(None, ge=0, allow_inf_nan=False, description="fail when the mean KL divergence exceeds this")


def ppl(value: float, err: float | None = None) -> str:
    return f"{value:.3f}" if err is None else f"{value:.3f} ± {err:.3f}"


def ratio(value: float) -> str:
    return f"{value:.4f}"


def kld(value: float) -> str:
    """A mean or median KL divergence."""
    return f"{value:.5f}"


def kld_p99(value: float) -> str:
    return f"{value:.4f}"


def kld_max(value: float) -> str:
    return f"{value:.3f}"


def percent(share: float, digits: int = 2) -> str:
    return f"{100 * share:.{digits}f}%"


def _fields(ev: Result) -> Mapping:
    return ev.model_dump() if isinstance(ev, VerifyResult) else ev


def cells(ev: Result) -> dict[str, str]:
    """{label: text} of every figure `ev` holds, labelled as the tables show them."""
    f = {k: v for k, v in _fields(ev).items() if v is not None}
    out = {}
    if "ppl_source" in f:
        out["PPL source"] = ppl(f["ppl_source"], f.get("ppl_source_err"))
    if "ppl_quant" in f:
        out["PPL quantized"] = ppl(f["ppl_quant"], f.get("ppl_quant_err"))
    if "ppl_ratio" in f:
        out["PPL ratio"] = ratio(f["ppl_ratio"])
    if "kld_mean" in f:
        out["KLD mean"] = kld(f["kld_mean"])
    if "kld_median" in f:
        out["KLD median"] = kld(f["kld_median"])
    if "kld_p99" in f:
        out["KLD p99"] = kld_p99(f["kld_p99"])
    if "kld_max" in f:
        out["KLD max"] = kld_max(f["kld_max"])
    if "kld_mean" in f and "kld_p99" in f:
        out["KLD mean / p99"] = f"{out['KLD mean']} / {out['KLD p99']}"
    if "top1_agreement" in f:
        out["top-1 agreement"] = percent(f["top1_agreement"])
    if "rms_delta_p" in f:
        out["RMS Δp"] = percent(f["rms_delta_p"], 3)
    if "tokens_scored" in f:
        out["tokens scored"] = f"{f['tokens_scored']:,}"
    return out


def short(ev: Result) -> str:
    """One line: 'PPL ratio 1.0123, KLD 0.00456, top-1 97.50%'."""
    c = cells(ev)
    return f"PPL ratio {c['PPL ratio']}, KLD {c['KLD mean']}, top-1 {c['top-1 agreement']}"


def line(ev: Result) -> str:
    """One line with both perplexities: 'PPL 12.345 -> 12.500 (ratio 1.0126), KLD 0.00456, top-1 97.50%'."""
    f = _fields(ev)
    c = cells(ev)
    return (f"PPL {ppl(f['ppl_source'])} -> {ppl(f['ppl_quant'])} (ratio {c['PPL ratio']}), "
            f"KLD {c['KLD mean']}, top-1 {c['top-1 agreement']}")


def gate_failures(results: list[Result], max_ppl_ratio: float | None, max_kld: float | None,
                  name: Callable[[Mapping], str] = lambda f: f["artifact"], as_flags: bool = True) -> list[str]:
    """One line per gate a result exceeds, naming the result (`name`) and the gate: as its
    command-line flag (--max-ppl-ratio), or as the recipe field (max_ppl_ratio)."""
    gate = flag_name if as_flags else str
    failed = []
    for ev in results:
        f = _fields(ev)
        if max_ppl_ratio is not None and f["ppl_ratio"] > max_ppl_ratio:
            failed.append(f"{name(f)}: PPL ratio {ratio(f['ppl_ratio'])} > {gate('max_ppl_ratio')} {max_ppl_ratio}")
        if max_kld is not None and f["kld_mean"] > max_kld:
            failed.append(f"{name(f)}: mean KLD {f['kld_mean']:.4f} > {gate('max_kld')} {max_kld}")
    return failed
