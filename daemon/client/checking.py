"""`overnight check`: the daemon's validation, run on files the user names; a verdict per file (the CLI renders it)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from daemon.core import auto, sweep
from daemon.core.as_trained import TrainedView, char_bound, encode_bounded
from daemon.core.datasets import (PREFERENCE_SCHEMAS, PROMPT_SCHEMAS, TEXT_SCHEMAS, DatasetError, DatasetReport,
                                  ExampleKind, iter_examples, kind_of)
from daemon.core.drop import ignored_name, plain_name
from daemon.core.dropfiles import companion_hint, dataset_named, name_problem, sidecar_beside
from daemon.core.fsutil import ignored
from daemon.core.home import Home
from daemon.core.basemodel import model_folder
from daemon.core.options import OptionsError, Resolved, load_home_toml, resolve
from daemon.core.basemodel import context_note, model_context
from daemon.core.probes import early_stopping_inert, held_out_count, no_eval_split, probe_shortfall
from daemon.core.preflight import (MemoryPlan, PaddingReport, Shape, Sizing, gpu_free_bytes, padding_report,
                                   plan_memory)
from daemon.core.tokenbatches import Budget
from daemon.core.templating import TemplateError
from daemon.engine.lineage import LORA_KEYS, check_parent, inherit_template
from daemon.engine.submission import (EVAL_SUFFIX, PROBES_SUFFIX, SubmissionError, as_trained, check_base_models,
                                      check_models, check_owner_files, check_pairing, check_truncation, load_options,
                                      role_of, stem_of, validate)


@dataclass
class Problem:
    """Why the daemon would refuse the file: its own words (as in rejected/NAME.error.txt), and where known the
    place (file, line, field) and the fix apart, for scripts."""

    message: str
    place: str | None = None
    fix: str | None = None

    @classmethod
    def of(cls, err: Exception) -> Problem:
        # validate() re-raises a DatasetError as a SubmissionError in the same words: the context keeps its parts
        data = err if isinstance(err, DatasetError) else err.__context__
        if isinstance(data, DatasetError) and str(data) == str(err):
            return cls(str(err), data.place, data.fix)
        fix = str(err).partition(" Fix: ")[2]
        return cls(str(err), None, fix or None)

    @classmethod
    def all_of(cls, err: Exception) -> list[Problem]:
        """An options file with several bad keys is one error of several lines: a problem each, with its fix."""
        data = err if isinstance(err, OptionsError) else err.__context__
        if isinstance(data, OptionsError) and len(data.each) > 1 and str(data) == str(err):
            return [cls(m, None, m.partition(" Fix: ")[2] or None) for m in data.each]
        return [cls.of(err)]


@dataclass
class Verdict:
    """What `overnight check` found in one file: facts for a person, the same for machines, and the problems."""

    file: str
    role: str | None = None
    summary: str = ""  # beside OK on the first line: "sidecar, 3 options"
    facts: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # what a drop of a good file would still need from the home (a base model): not a fault of the file
    needs: list[str] = field(default_factory=list)
    # `--show N`: the first examples as the model sees them, each a list of {"text", "train"} segments
    shown: list[list[dict[str, Any]]] = field(default_factory=list)
    shown_as: str = "example"  # what one of `shown` is: an example, or (text) a block of max_length tokens
    shown_of: list[str] = field(default_factory=list)  # preference data: which record and side each example is

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, *facts: str | None) -> None:
        self.facts += [f for f in facts if f]

    def to_dict(self) -> dict[str, Any]:
        out = {"file": self.file, "ok": self.ok, "role": self.role, **self.data,
               "problems": [asdict(p) for p in self.problems], "needs": self.needs}
        if self.shown:
            out["examples"] = self.shown
        if self.shown_of:
            out["example_of"] = self.shown_of  # beside examples, one each: "record 1, chosen", …
        return {**out, "error": self.problems[0].message} if self.problems else out


def _stats_line(label: str, s: dict | None) -> str | None:
    if not s:
        return None
    return f"{label}: min {s['min']}, mean {s['mean']:.1f}, p50 {s['p50']}, p95 {s['p95']}, max {s['max']}"


def check_file(path: Path, home: Home, show: int = 0) -> Verdict:
    """Validate one file (a dataset with the sidecar and probes beside it, a sidecar, or a probe file); with
    `show`, a dataset's first `show` examples are rendered as the model will see them."""
    if not path.exists():
        return Verdict(str(path), problems=[Problem(f"{path}: no such file. Fix: check the path (relative paths are "
                                                    f"from {Path.cwd()})", str(path))])
    verdict = Verdict(str(path), role_of(path))
    try:
        if not _is_owner_toml(path, home):
            check_pairing(path)  # the inbox's rule: a stem it cannot pair is refused, every file of it
        if _is_owner_toml(path, home):
            _check_owner_toml(path, home, verdict)
        elif verdict.role == "sidecar":
            _check_sidecar(path, home, verdict)
        elif verdict.role == "probes":
            from daemon.core.probes import load_probe_file
            dataset = dataset_named(path.parent, stem_of(path))  # its kind's probes only, as the daemon checks
            probes = load_probe_file(path, _kind_of(dataset), dataset.name if dataset else None)
            verdict.summary = f"{len(probes)} probe{'s' * (len(probes) != 1)}"
            verdict.data = {"probes": len(probes)}
        elif verdict.role == "eval":
            from daemon.core.evalfile import load_eval_file
            records = load_eval_file(path)
            verdict.summary, verdict.data = f"{len(records)} eval records", {"eval_records": len(records)}
        elif verdict.role == "unsupported" and ignored(path.name):  # a download in progress: its name, not format
            raise SubmissionError(f"{ignored_name(path.name)}. Fix: once it is complete, drop it as "
                                  f"{plain_name(path.name)}")
        elif verdict.role == "unsupported":
            raise SubmissionError(f"{path.name}: unsupported file type '{path.suffix}'. Datasets end in .jsonl, "
                                  f".json, .csv, .parquet or .txt.")
        else:
            _check_dataset(path, home, verdict, show)
    except (SubmissionError, OptionsError, DatasetError, TemplateError) as e:
        verdict.problems += Problem.all_of(e)
    hint = companion_hint(path)
    if hint:  # valid, and for a dataset nobody has: xx.jsonl.toml goes with xx.jsonl.jsonl
        verdict.needs.append(f"note: {hint}")
    return verdict


def _is_owner_toml(path: Path, home: Home) -> bool:
    """An `overnight.toml` anywhere but in the inbox (where it would be the sidecar of overnight.jsonl)."""
    return path.name == "overnight.toml" and path.resolve().parent != home.inbox.resolve()


def _check_sidecar(path: Path, home: Home, verdict: Verdict) -> None:
    """A sidecar alone gets the checks it gets beside its dataset: options, sweep cap, base models (and their
    context) and the adapter it continues from."""
    resolved = load_options(path, home.toml)
    opts = {k: v for k, v in resolved.values.items() if resolved.sources.get(k) == "sidecar"}
    check_models(resolved, path, home.toml, require_model=False)
    grid = sweep.summary(resolved)
    verdict.summary = f"sidecar, {len(opts)} option{'s' * (len(opts) != 1)}"
    verdict.data = {"options": opts, "runs": sweep.run_count(resolved)}
    verdict.add(f"sweep: {grid}" if grid else None)


def _check_owner_toml(path: Path, home: Home, verdict: Verdict) -> None:
    """The machine owner's overnight.toml: every option, the owner-only tables ([hooks], [notify]) and base models."""
    opts = load_home_toml(path)
    if "base_model" in opts:
        check_base_models(resolve(opts, None), None, path)
    check_owner_files(opts, path)  # eval_file, forgetting_sample: drops wait while they are broken
    verdict.role, verdict.summary = "owner", f"overnight.toml, {len(opts)} option{'s' * (len(opts) != 1)}"
    verdict.data = {"options": sorted(opts)}
    if opts.get("hooks"):
        verdict.add(f"hooks: {', '.join(sorted(opts['hooks']))}")
    if opts.get("notify"):
        from daemon.core.notifytable import NotifyConfig, masked
        cfg = NotifyConfig.from_table(opts["notify"])
        verdict.add(f"notify: {', '.join(masked(u) for u in cfg.urls)} on {', '.join(cfg.on) or 'no events'}")
    if "base_model" in opts:
        verdict.add(f"base model: {', '.join(resolve(opts, None).base_models)}")
    if opts.get("executor"):
        from daemon.core.executortable import shared_fs_warning, summary
        slurm = opts["executor"].get("kind") == "slurm"
        warning = shared_fs_warning(path.resolve().parent) if slurm else None
        verdict.add(summary(opts["executor"]), warning)
        if warning:
            verdict.data["warnings"] = [warning]


def _kind_of(dataset: Path | None) -> Any:
    """The kind of a dataset's examples, from its first record (None: none to read)."""
    try:
        return next(iter_examples(dataset))["kind"] if dataset else None
    except (DatasetError, StopIteration, OSError, KeyError):
        return None  # checking the dataset says what is wrong with it


def _check_dataset(path: Path, home: Home, verdict: Verdict, show: int = 0) -> None:
    problem = name_problem(path.name)  # the daemon refuses the drop before it reads it
    if problem:
        raise SubmissionError(problem)
    counters: list[_Counter | None] = []  # the one validate asks for: after it, how many records it counted in part

    def token_counter(opts: Any) -> _Counter | None:
        counters.append(_token_counter(opts.base_models, home.root, sweep.first_run(opts).values["max_length"]))
        return counters[-1]

    probes = path.with_name(stem_of(path) + PROBES_SUFFIX)
    eval_file = path.with_name(stem_of(path) + EVAL_SUFFIX)
    sub = validate(path, sidecar_beside(path), probes if probes.exists() else None, home.toml,
                   require_model=False, token_counter=token_counter, show=show,
                   eval_file=eval_file if eval_file.exists() else None)
    r = sub.report
    counter = counters[-1] if counters else None
    if counter is not None and counter.capped and r.schema in TEXT_SCHEMAS:
        r.notes.append(f"{counter.capped} record(s) longer than {counter.limit:,} characters: their token counts above "
                       f"are those of their first {counter.limit:,} characters only (lower bounds); the run trains all "
                       f"of their text, cut into blocks of max_length")
    inherited = _parents_template(sub, home)
    first = sweep.first_run(sub.options)  # a sweep's lists: estimate on the grid's first run
    if inherited:
        r.notes.append(f"chat_template = {inherited!r} is taken from the adapter it continues from (its tokens and "
                       f"turns are that template's); set chat_template in the sidecar to choose another")
    if ignored(path.name):
        r.notes.append(f"{ignored_name(path.name)}: drop it as {plain_name(path.name)}")
    if path.is_symlink():
        r.notes.append("this is a symbolic link: the daemon refuses links dropped into the inbox; use "
                       "`overnight add FILE` (it copies) or mv the real file")
        if path.parent.resolve() == home.inbox.resolve():
            raise SubmissionError(f"{path.name} is a symbolic link; overnight refuses links in the inbox so that "
                                  f"nothing outside the home is read or moved. Fix: move or copy the real file "
                                  f"into the inbox.")
    grid = sweep.summary(sub.options)
    refused = None  # a record the template refuses: said after the model checks, in the daemon's order
    try:
        trained = _as_trained(sub, first.values, home, verdict, show)
    except SubmissionError as e:
        trained, refused = None, e
    tokens = (_stats_line(f"tokens per example as trained ({trained.how})", trained.view.lengths.summary())
              if trained and trained.view.lengths.count else
              _stats_line(f"tokens per example ({Path(sub.options.base_models[0]).name} tokenizer, text only)",
                          r.tokens) if r.tokens else None)
    kind = kind_of(r.schema)
    objective, why = auto.objective(first.values["objective"], kind)  # validate() refused one that does not fit
    r.notes += _unused_batching(first, objective, r.schema)
    r.notes += _split_notes(r, first.values, path, sub.probes is not None)
    verdict.data["objective"] = objective
    verdict.add(f"format: {r.format}   schema: {r.schema}   records: {r.records}" + _COUNTED.get(kind, ""),
                _stats_line("characters per example", r.chars), tokens,
                trained.cut_line() if trained else None,
                f"objective: {objective} ({why})",
                *_plan_lines(r, first, home.root, trained, objective),
                trained.template_line if trained else None,
                f"sidecar: {sub.sidecar.name}" if sub.sidecar else None,
                f"sweep: {grid} (estimates above: the first run's options)" if grid else None,
                f"probes: {sub.probes.name} ({sub.probe_count} probe{'s' * (sub.probe_count != 1)})" if sub.probes else None,
                f"eval file: {sub.eval_file.name if sub.eval_file else sub.options.values.get('eval_file')} "
                f"({sub.eval_count} records, scored at the end of each run)" if sub.eval_count else None,
                *(f"note: {n}" for n in r.notes))
    verdict.data.update(report=r.to_dict(), base_models=sub.options.base_models, runs=sweep.run_count(sub.options))
    if not sub.options.base_models:  # e.g. checked outside a home: the data is judged, the model is for later
        verdict.needs.append(f"a drop also needs a base model: set base_model in {home.toml.name} or the sidecar "
                             f"{stem_of(path)}.toml")
        if show:
            verdict.needs.append("--show needs a base model too: the examples are laid out as the model sees them, "
                                 "by its chat template and special tokens; set base_model and check again")
        if refused is not None:
            raise refused
        return
    set_before = dict(sub.options.sources)
    parent = check_models(sub.options, sub.sidecar, home.toml)
    if refused is not None:
        raise refused
    check_truncation(sub)
    if sub.options.sources.get("max_length") == "default":
        for spec in sub.options.base_models:
            verdict.add(context_note(first.values["max_length"], model_context(model_folder(spec, home.root)), spec))
    verdict.add(f"base model: {', '.join(sub.options.base_models)}",
                f"continues from: {parent.label} ({parent.folder})" if parent is not None else None,
                _unused_lora(sub.options, set_before))


def _unused_lora(opts: Resolved, set_before: dict[str, str]) -> str | None:
    """LoRA options set for a continuation shape nothing: it trains its parent's adapter as it was made (the
    options now hold that shape, lineage.inherit_lora)."""
    unused = [k for k in LORA_KEYS if set_before.get(k, "default") != "default" and opts.sources.get(k) == "parent"]
    if not unused:
        return None
    shape = ", ".join(f"{k} {_shown(opts.values[k])}" for k in LORA_KEYS if opts.sources.get(k) == "parent")
    return (f"note: {', '.join(unused)} unused: a continuation trains its parent's adapter as it was made "
            f"({shape}); remove {'them' if len(unused) > 1 else 'it'}, or train a fresh adapter without init_adapter")


def _shown(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


_COUNTED = {ExampleKind.PAIR: " (preference pairs)", ExampleKind.JUDGED: " (labelled completions)"}


def _parents_template(sub: Any, home: Home) -> str | None:
    """The parent adapter's chat template, taken over before the records are laid out (as the daemon's checks do);
    a parent that cannot be resolved is said later, after the model checks, in the daemon's order."""
    try:
        parent = check_parent(sub.options, home.toml)
    except SubmissionError:
        return None
    return inherit_template(sub.options, parent) if parent is not None else None


@dataclass
class Trained:
    """The dataset as the run will train on it (daemon/core/as_trained.py), and how `check` words it."""

    view: TrainedView
    how: str  # "tiny-qwen2 tokenizer, chat template"
    template_line: str | None
    max_length: int

    def cut_line(self) -> str | None:
        v = self.view
        if not v.lengths.count:
            return None
        if not v.truncated:
            return f"max_length {self.max_length}: no record is cut"
        return (f"max_length {self.max_length}: {v.truncated} record(s) cut, {v.dropped} of them dropped (nothing of "
                f"their answer left to learn)" + (": raise max_length to keep them" if v.dropped else "")
                + (f"; {v.capped} of them longer than {char_bound(self.max_length):,} characters, tokenised only that "
                   f"far (nothing after can be trained; their token counts above are lower bounds)"
                   if v.capped else ""))


def _as_trained(sub: Any, values: dict[str, Any], home: Home, verdict: Verdict, show: int) -> Trained | None:
    """The records as the run lays them out (submission.as_trained, the daemon's own check) and how check says
    it: the chat template and prompt format, the lengths in the base model's tokens."""
    sub.trained = t = as_trained(sub, home.root, show)
    if t is None:
        return None
    # prompt-style records: the prompt schemas, and preference records given as text (not as messages)
    prompts = sub.report.schema in PROMPT_SCHEMAS or (sub.report.schema in PREFERENCE_SCHEMAS and not t.chat_form)
    line = None
    if sub.report.schema not in TEXT_SCHEMAS:
        fmt, as_chat = t.fmt, t.as_chat
        auto = " (auto)" if values["prompt_format"] == "auto" else ""
        unknown = fmt is None and t.folder is None  # no base model yet: its template is not known
        form = ("chat if the base model has a chat template, else raw" if unknown and auto else
                "chat" if as_chat else "raw")
        template = "the base model's (no base model set yet)" if unknown else fmt.describe() if fmt else "none"
        line = f"chat template: {template}" + (f"; prompt format: {form}{auto}" if prompts else "")
        verdict.data["chat_template"] = fmt.label if fmt else None
        verdict.data["prompt_format"] = (None if unknown and auto else "chat" if as_chat else "raw") if prompts else None
    verdict.shown, verdict.shown_of = t.view.shown, t.view.shown_of
    if sub.report.schema in TEXT_SCHEMAS:
        verdict.shown_as = "block"  # max_length tokens of the records joined, as the run packs them
    if t.counted:
        verdict.data["as_trained"] = t.view.to_dict()
    how = f"{t.folder.name if t.folder else '?'} tokenizer, " + (
        "chat template" if t.fmt and (t.as_chat or not prompts) else "prompt + answer")
    return Trained(t.view, how, line, t.max_length)


def _plan_lines(r: DatasetReport, opts: Resolved, root: Path, trained: Trained | None,
                objective: str) -> list[str | None]:
    """The batching line and the memory plan's (the trainer's own rules, on this machine's GPU if it has one)."""
    plan, free, shape = _plan(r, opts, root, objective)
    memory = None
    if free is not None and shape is not None:
        memory = (f"GPU memory (preflight, bf16): gradient checkpointing {'on' if plan.checkpointing else 'off'}: "
                  f"{plan.checkpointing_why}")
    batches = f"batches: {plan.batch_line()}" if free is not None or plan.batch_tokens else None
    return [_batching_line(r, opts.values, objective, trained, plan.batch_tokens, free is not None), batches, memory]


def _split_notes(r: DatasetReport, values: dict[str, Any], path: Path, probe_file: bool) -> list[str]:
    """What the run's hold-outs will lack, said before the drop (the trainer's console says the same): no eval split
    (no eval loss, early stopping off), an early stopping that can never stop the run, fewer probes than asked."""
    notes = []
    held = 0 if probe_file else held_out_count(r.records, values["probe_count"])
    patience, fraction = values["early_stopping_patience"], values["eval_fraction"]
    missing = no_eval_split(r.records, fraction, held, patience)
    if missing and (fraction > 0 or patience > 0):  # eval_fraction = 0 alone is a choice, not news
        notes.append(f"eval: {missing}")
    elif not missing and isinstance(values["max_steps"], int) and values["max_steps"] > 0:
        # a run of epochs knows its steps only once tokenised: its console says it then
        notes.append(early_stopping_inert(patience, values["save_every"], values["max_steps"]))
    if not probe_file and r.schema not in TEXT_SCHEMAS:  # text has no probes to hold out (said by the run)
        short = probe_shortfall(r.records, values["probe_count"])
        if short and held_out_count(r.records, values["probe_count"]) == 0:
            short += f"; drop {stem_of(path)}{PROBES_SUFFIX} beside it to watch some"
        notes.append(f"probes: {short}" if short else None)
    return [n for n in notes if n]


def _unused_batching(opts: Resolved, objective: str, schema: str) -> list[str]:
    """Batching options this run would set aside, said (the run's console says so too late to fix)."""
    v, chosen = opts.values, lambda key: opts.sources.get(key, "default") != "default"
    budget = v["batch_tokens"]
    if not chosen("batch_tokens") or not isinstance(budget, int) or schema in TEXT_SCHEMAS:
        return []
    if objective != "sft":
        return [f"batch_tokens = {budget} is not used: TRL's preference trainers ({objective}) batch by examples, "
                f"batch_size = {v['batch_size']} a micro-batch"]
    out = []
    if chosen("batch_size"):
        out.append(f"batch_size = {v['batch_size']} is not used: batch_tokens = {budget} sets the micro-batches "
                   f"(remove one of the two)")
    if budget < v["max_length"]:
        out.append(f"batch_tokens = {budget} is below max_length {v['max_length']}: each example longer than it is a "
                   f"micro-batch of its own; set batch_tokens to at least max_length to batch those together")
    return out


def _plan(r: DatasetReport, opts: Resolved, root: Path, objective: str) -> tuple[MemoryPlan, int | None, Shape | None]:
    """The memory plan of the first base model against the first GPU (none: the plan for the CPU)."""
    folder = model_folder(opts.base_models[0], root) if opts.base_models else None
    free = gpu_free_bytes()
    shape = (Shape.from_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
             if folder is not None and (folder / "config.json").is_file() else None)
    v = opts.values
    longest = min(int(r.tokens["max"]) + 1, v["max_length"]) if r.tokens else v["max_length"]
    liger = auto.liger(v["use_liger_kernel"], free is not None, auto.liger_installed())[0]
    sizing = Sizing(v["gradient_checkpointing"], v["batch_tokens"], v["batch_size"], v["grad_accum"], longest,
                    v["lora_r"], v["quantization"], 2, liger, rows=2 if objective == "dpo" else 1,
                    batch_size_set=opts.sources.get("batch_size", "default") != "default", budgets=objective == "sft")
    return plan_memory(shape, free, sizing), free, shape


def _batching_line(r: DatasetReport, values: dict[str, Any], objective: str, trained: Trained | None = None,
                   budget: int = 0, on_gpu: bool = False) -> str | None:
    """The padding the run's batching avoids, estimated on the token-count sample (prompt and chat data): the
    lengths as trained where known, else the text's plus an eos."""
    if r.schema in TEXT_SCHEMAS:
        return "batching: text is cut into full blocks of max_length: no padding"
    if objective in ("dpo", "kto"):  # the trainer's rule (auto.batching): TRL's collator pads each batch
        kind = ExampleKind.PAIR if objective == "dpo" else ExampleKind.JUDGED
        batching, how = auto.batching(values["batching"], kind, "sdpa")
        return f"batching: {batching.replace('_', '-')} at batch {values['batch_size']} ({how})"
    sample = trained.view.lengths.sample if trained and trained.view.lengths.count else [n + 1 for n in r.token_sample]
    if not sample:
        return None
    try:  # the trainer's own rule, on this machine
        attention, _ = auto.attention(values["attn_implementation"], auto.Machine.here())
    except ValueError:
        attention = "sdpa"  # the run would fail at its start, saying why; its batching then matters no more
    batching, how = auto.batching(values["batching"], "prompt", attention)
    plan = Budget(budget, batching, on_gpu) if budget else None
    batches = plan.batches([min(n, values["max_length"]) for n in sample], values["seed"]) if plan else None
    est = padding_report(sample, values["batch_size"], values["max_length"], batching, values["seed"],
                         batches=batches, multiple_of=plan.multiple_of if plan else 1)
    scale = r.records / len(sample)
    est = PaddingReport(batching, int(est.useful * scale), int(est.padded * scale), int(est.chosen * scale),
                        est.batches)
    at = f"up to {budget:,} tokens a micro-batch" if budget else f"batch {values['batch_size']}"
    return (f"batching: {'≈ ' if scale > 1 else ''}{est.line()} per epoch at {at}, "
            f"max_length {values['max_length']} ({how})")


class _Counter:
    """Counts an example's tokens, tokenising no more of a long text than max_length can keep (as_trained.py's
    bound: a 50 MB record costs no minutes nor gigabytes); `capped` says how many were counted in part."""

    def __init__(self, tok: Any, max_length: int) -> None:
        self.tok, self.max_length, self.limit, self.capped = tok, max_length, char_bound(max_length), 0

    def __call__(self, text: str) -> int:
        (encoding,), (cut,) = encode_bounded([text], self.max_length, self._encode, lambda e: len(e.ids))
        self.capped += cut
        return len(encoding.ids)

    def _encode(self, texts: list[str]) -> list[Any]:
        return [self.tok.encode(t, add_special_tokens=False) for t in texts]


def _token_counter(models: list[str], root: Path, max_length: int) -> _Counter | None:
    """Count tokens with the first base model's tokenizer.json (the `tokenizers` library: fast, no torch)."""
    folder = model_folder(models[0], root) if models else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None  # characters only, until a tokenizer is known
    from tokenizers import Tokenizer

    return _Counter(Tokenizer.from_file(str(folder / "tokenizer.json")), max_length)
