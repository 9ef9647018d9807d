"""`overnight check`: the daemon's validation, run on files the user names, printed for a person."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

from daemon import sweep
from daemon.datasets import TEXT_SCHEMAS, DatasetError, DatasetReport
from daemon.home import Home
from daemon.lineage import check_parent
from daemon.models import model_folder
from daemon.options import OptionsError, Resolved, load_home_toml, load_sidecar, resolve
from daemon.preflight import PaddingReport, Shape, checkpointing_decision, gpu_free_bytes, padding_report
from daemon.submission import PROBES_SUFFIX, SubmissionError, check_base_models, role_of, stem_of, validate


def _stats_line(label: str, s: dict | None) -> str | None:
    if not s:
        return None
    return (f"  {label}: min {s['min']}, mean {s['mean']:.1f}, p50 {s['p50']}, p95 {s['p95']}, max {s['max']}")


def check_file(path: Path, home: Home) -> dict[str, Any]:
    """Validate one file (a dataset with the sidecar and probes beside it, a sidecar, or a probe file)."""
    if not path.exists():
        return {"file": str(path), "ok": False, "error": f"{path}: no such file", "text": f"{path}: no such file"}
    role = role_of(path)
    try:
        if _is_owner_toml(path, home):
            return _check_owner_toml(path, home)
        if role == "sidecar":
            opts = load_sidecar(path)
            resolved = resolve(load_home_toml(home.toml), opts)
            sweep.check_cap(resolved, path)
            if "base_model" in opts:  # the daemon's check of the models it names (the toml may name one instead)
                check_base_models(resolve(None, opts), path, home.toml)
            if "init_adapter" in opts:
                check_parent(resolved, home.toml)
            grid = sweep.summary(resolved)
            return _ok(path, {"role": role, "options": opts, "runs": sweep.run_count(resolved)},
                       f"{path}: OK (sidecar, {len(opts)} options)" + (f"\n  sweep: {grid}" if grid else ""))
        if role == "probes":
            from daemon.probes import load_probe_file
            probes = load_probe_file(path)
            return _ok(path, {"role": role, "probes": len(probes)}, f"{path}: OK ({len(probes)} probes)")
        if role == "unsupported":
            raise SubmissionError(f"{path.name}: unsupported file type '{path.suffix}'. Datasets end in .jsonl, "
                                  f".json, .csv, .parquet or .txt.")
        return _check_dataset(path, home)
    except (SubmissionError, OptionsError, DatasetError) as e:
        return {"file": str(path), "ok": False, "role": role, "error": str(e), "text": f"{path}: ERROR\n{e}"}


def _is_owner_toml(path: Path, home: Home) -> bool:
    """An `overnight.toml` anywhere but in the inbox (where it would be the sidecar of overnight.jsonl)."""
    return path.name == "overnight.toml" and path.resolve().parent != home.inbox.resolve()


def _check_owner_toml(path: Path, home: Home) -> dict[str, Any]:
    """The machine owner's overnight.toml: every option, the owner-only tables ([hooks], [notify]) and base models."""
    opts = load_home_toml(path)
    if "base_model" in opts:
        check_base_models(resolve(opts, None), None, path)
    lines = [f"{path}: OK (overnight.toml, {len(opts)} options)"]
    if opts.get("hooks"):
        lines.append(f"  hooks: {', '.join(sorted(opts['hooks']))}")
    if opts.get("notify"):
        from daemon.notify import NotifyConfig, masked
        cfg = NotifyConfig.from_table(opts["notify"])
        lines.append(f"  notify: {', '.join(masked(u) for u in cfg.urls)} on {', '.join(cfg.on) or 'no events'}")
    if "base_model" in opts:
        lines.append(f"  base model: {', '.join(resolve(opts, None).base_models)}")
    return _ok(path, {"role": "owner", "options": sorted(opts)}, "\n".join(lines))


def _check_dataset(path: Path, home: Home) -> dict[str, Any]:
    sidecar = path.with_name(stem_of(path) + ".toml")
    probes = path.with_name(stem_of(path) + PROBES_SUFFIX)
    sub = validate(path, sidecar if sidecar.exists() else None, probes if probes.exists() else None, home.toml,
                   require_model=False, token_counter=lambda opts: _token_counter(opts.base_models, home.root))
    r = sub.report
    first = sweep.first_run(sub.options)  # a sweep's lists: estimate on the grid's first run
    if path.is_symlink():
        r.notes.append("this is a symbolic link: the daemon refuses links dropped into the inbox; use "
                       "`overnight add FILE` (it copies) or mv the real file")
        if path.parent.resolve() == home.inbox.resolve():
            raise SubmissionError(f"{path.name} is a symbolic link; overnight refuses links in the inbox so that "
                                  f"nothing outside the home is read or moved. Fix: move or copy the real file "
                                  f"into the inbox.")
    lines = [f"{path}: OK", f"  format: {r.format}   schema: {r.schema}   records: {r.records}",
             _stats_line("characters per example", r.chars),
             _stats_line(f"tokens per example ({Path(sub.options.base_models[0]).name} tokenizer, text only)",
                         r.tokens) if r.tokens else None,
             _batching_line(r, first.values), _memory_line(r, first, home.root)]
    grid = sweep.summary(sub.options)
    lines += [f"  sidecar: {sub.sidecar.name}" if sub.sidecar else None,
              f"  sweep: {grid} (estimates above: the first run's options)" if grid else None,
              f"  probes: {sub.probes.name} ({sub.probe_count} probes)" if sub.probes else None]
    lines += [f"  note: {n}" for n in r.notes]
    out = {"role": "dataset", "report": r.to_dict(), "base_models": sub.options.base_models,
           "runs": sweep.run_count(sub.options)}
    try:
        check_base_models(sub.options, sub.sidecar, home.toml)
        parent = check_parent(sub.options, home.toml)
    except SubmissionError as e:
        lines.append(f"ERROR: {e}")
        return {"file": str(path), "ok": False, **out, "error": str(e),
                "text": "\n".join(x for x in lines if x).replace(": OK", ": ERROR", 1)}
    lines.append(f"  base model: {', '.join(sub.options.base_models)}")
    if parent is not None:
        lines.append(f"  continues from: {parent.label} ({parent.folder})")
    return _ok(path, out, "\n".join(x for x in lines if x))


def _batching_line(r: DatasetReport, values: dict[str, Any]) -> str | None:
    """The padding the run's batching avoids, estimated on the token-count sample (prompt and chat data)."""
    if r.schema in TEXT_SCHEMAS:
        return "  batching: text is cut into full blocks of max_length: no padding"
    if not r.token_sample:
        return None
    requested = values["batching"]
    batching = requested if requested != "auto" else (
        "padding_free" if importlib.util.find_spec("flash_attn") else "length_grouped")
    est = padding_report([n + 1 for n in r.token_sample], values["batch_size"], values["max_length"], batching,
                         values["seed"])
    scale = r.records / len(r.token_sample)
    est = PaddingReport(batching, int(est.useful * scale), int(est.padded * scale), int(est.chosen * scale))
    how = "auto: padding-free where flash-attention is installed" if requested == "auto" else "set in the options"
    return (f"  batching: {'≈ ' if scale > 1 else ''}{est.line()} per epoch at batch {values['batch_size']}, "
            f"max_length {values['max_length']} ({how})")


def _memory_line(r: DatasetReport, opts: Resolved, root: Path) -> str | None:
    """On a machine with a GPU: the preflight memory estimate of the first base model against that GPU."""
    folder = model_folder(opts.base_models[0], root) if opts.base_models else None
    free = gpu_free_bytes()
    if folder is None or free is None or not (folder / "config.json").is_file() or not r.tokens:
        return None
    shape = Shape.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    v = opts.values
    seq_len = min(int(r.tokens["max"]) + 1, v["max_length"])
    on, why = checkpointing_decision(v["gradient_checkpointing"], shape, free, batch_size=v["batch_size"],
                                     seq_len=seq_len, lora_r=v["lora_r"], quantization=v["quantization"],
                                     dtype_bytes=2, liger=v["use_liger_kernel"])
    return f"  GPU memory (preflight, bf16): gradient checkpointing {'on' if on else 'off'}: {why}"


def _token_counter(models: list[str], root: Path) -> Callable[[str], int] | None:
    """Count tokens with the first base model's tokenizer.json (the `tokenizers` library: fast, no torch)."""
    folder = model_folder(models[0], root) if models else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None  # characters only, until a tokenizer is known
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _ok(path: Path, extra: dict[str, Any], text: str) -> dict[str, Any]:
    return {"file": str(path), "ok": True, **extra, "text": text}
