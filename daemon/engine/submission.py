"""One drop = a dataset plus its optional sidecar and probe file, validated exactly as `overnight check` does."""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from daemon.core import auto, datasets, evalfile, evalreport, sweep
from daemon.core.errors import SubmissionError
from daemon.core.fsutil import file_version, ignored, model_name
from daemon.engine.lineage import check_parent, check_template_fits, inherit_lora, inherit_template
from daemon.core.basemodel import (ModelNotFound, has_weights, layer_names, locate_model, model_context,
                              model_folder, targets_missing)
from daemon.core.options import OptionsError, Resolved, load_home_toml, load_sidecar, resolve

# what each file of a drop is, by its name: shared with `overnight add` and the HTTP upload (core)
from daemon.core.dropfiles import EVAL_SUFFIX, PROBES_SUFFIX, role_of, stem_of  # noqa: E402,F401


@dataclass
class Submission:
    """A validated drop, ready to become one run per base model."""

    dataset: Path
    sidecar: Path | None
    probes: Path | None
    report: datasets.DatasetReport
    options: Resolved
    probe_count: int | None = None
    notes: list[str] = field(default_factory=list)
    trained: AsTrained | None = None  # the records as the run lays them out, where the base model is known
    eval_file: Path | None = None  # NAME.eval.jsonl dropped with the dataset: scored at the end of each run
    eval_count: int | None = None  # the records of the eval file that applies (dropped, else the owner's)

    @property
    def name(self) -> str:
        return self.options.values.get("name") or model_name(stem_of(self.dataset))


def validate(dataset: Path, sidecar: Path | None, probes: Path | None, home_toml: Path,
             require_model: bool = True,
             token_counter: Callable[[Resolved], Callable[[str], int] | None] | None = None,
             show: int = 0, eval_file: Path | None = None) -> Submission:
    """Validate a dataset with its sidecar and probes; raise SubmissionError with the first problem found.

    `token_counter`, given the resolved options, may return a function counting an example's tokens. With
    `require_model` False (`overnight check`) the checks of the base model and what it implies are left to
    `finish`, so that check can say what it found in the data first; the daemon runs them all here.
    """
    opts = load_options(sidecar, home_toml)
    try:
        report = datasets.inspect_dataset(dataset, token_counter(opts) if token_counter else None)
    except datasets.DatasetError as e:
        raise SubmissionError(str(e)) from None
    kind = datasets.kind_of(report.schema)
    probe_count = None
    if probes is not None:
        from daemon.core.probes import load_probe_file
        try:
            probe_count = len(load_probe_file(probes, kind=kind, dataset=dataset.name))
        except datasets.DatasetError as e:
            raise SubmissionError(str(e)) from None
    check_objective(opts, kind, dataset, sidecar, home_toml)
    sub = Submission(dataset, sidecar, probes, report, opts, probe_count, eval_file=eval_file,
                     eval_count=check_eval_files(eval_file, opts, home_toml))
    _check_scored_by_eval_file(sub, home_toml)
    if require_model:
        finish(sub, home_toml, require_model=True, show=show)
    return sub


# (the two files' paths and stats) -> the eval file's record count, or why they cannot be used
_owner_files_seen: dict[tuple, int | None | SubmissionError] = {}


def check_owner_files(values: dict[str, Any], home_toml: Path) -> int | None:
    """The owner's `eval_file` (it must load: a DatasetError names its line and the fix) and `forgetting_sample`
    (UTF-8 text), as overnight.toml names them; the eval file's record count (None without one). Checked again only
    when a file changed: the daemon asks before every drop."""
    owner = evalfile.owner_eval_file(values.get("eval_file"), home_toml.parent)
    sample = evalfile.owner_eval_file(values.get("forgetting_sample"), home_toml.parent)
    key = (home_toml, *((p, file_version(p)) for p in (owner, sample)))
    if key not in _owner_files_seen:
        try:
            _owner_files_seen[key] = _owner_files(owner, sample, values, home_toml)
        except SubmissionError as e:
            _owner_files_seen[key] = e
    seen = _owner_files_seen[key]
    if isinstance(seen, SubmissionError):
        raise SubmissionError(str(seen))
    return seen


def check_owner_models(values: dict[str, Any], home_toml: Path) -> None:
    """The owner's base_model, which every drop naming none of its own trains: one not there (a disk not mounted
    yet, a download not done) holds the drops, as a broken overnight.toml does, instead of rejecting each. Not
    cached: the model appears without overnight.toml changing."""
    specs = values.get("base_model")
    for spec in [specs] if isinstance(specs, str) else specs or []:
        try:
            locate_model(spec, home_toml.parent)
        except ModelNotFound as e:
            raise SubmissionError(f"{home_toml}: {e}") from None


def _owner_files(owner: Path | None, sample: Path | None, values: dict[str, Any], home_toml: Path) -> int | None:
    count = None
    if owner is not None:
        try:
            count = len(evalfile.load_eval_file(owner))
        except datasets.DatasetError as e:
            raise SubmissionError(f"{home_toml}: eval_file = {values.get('eval_file')!r}: {e}") from None
    if sample is not None:
        problem = _sample_problem(sample)
        if problem:
            raise SubmissionError(f"{home_toml}: forgetting_sample = {values.get('forgetting_sample')!r}: "
                                  f"{sample} {problem}. Fix: name a UTF-8 text file of general prose (relative "
                                  f"to the home), or remove forgetting_sample to use the shipped sample.")
    return count


def _sample_problem(sample: Path) -> str | None:
    """Why a forgetting_sample cannot give a forgetting score (None: it can): unreadable, empty, or too short for
    a loss that means anything (one token predicts nothing: every run said `forgetting n/a`, unexplained)."""
    try:
        text = sample.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot be read as UTF-8 text ({e})"
    least = evalreport.FORGETTING_SAMPLE_MIN_CHARS
    if not text:
        return "is empty: no text to score"
    if len(text) < least:
        return (f"holds {len(text)} character(s): too little text to score (the forgetting score needs {least} "
                f"characters or more, a few sentences; a few KB of prose gives a steadier score)")
    return None


def check_eval_files(dropped: Path | None, opts: Resolved, home_toml: Path) -> int | None:
    """The files the end-of-run report reads: the eval file dropped with the dataset, the owner's `eval_file` (each
    must load: a DatasetError names its line and the fix) and `forgetting_sample`. Returns the record count of the
    eval file that applies (the dropped one wins), None without one."""
    count = check_owner_files(opts.values, home_toml)
    if dropped is not None:
        try:
            count = len(evalfile.load_eval_file(dropped))
        except datasets.DatasetError as e:
            raise SubmissionError(str(e)) from None
    return count


def check_objective(opts: Resolved, kind: str, dataset: Path, sidecar: Path | None, home_toml: Path) -> None:
    """An objective set in the options must fit the data (daemon/core/auto.py's rule): DPO needs pairs, KTO
    labelled completions, SFT neither."""
    requested = opts.values["objective"]
    try:
        objective, why = auto.objective(requested, kind)
    except ValueError as e:
        where = sidecar if opts.sources.get("objective") == "sidecar" and sidecar else home_toml
        said = f'objective = "{requested}"'
        raise SubmissionError(f"{dataset.name}: " + str(e).replace(said, f"{said} (set in {where.name})", 1)
                              ) from None
    if objective != "dpo" and opts.sources.get("loss_type") == "sidecar" and sidecar:  # the home's applies to DPO
        raise SubmissionError(f"{sidecar.name}: loss_type is DPO's loss, but {dataset.name} trains with objective "
                              f"{objective} ({why}). Fix: remove loss_type from {sidecar.name}, or drop preference "
                              f"pairs for DPO.")
    if opts.values.get("select_metric") == evalreport.REWARD_ACCURACY:
        _check_reward_accuracy(opts, objective, why, dataset, sidecar, home_toml)
    small = [b for b in sweep.values_of(opts.values["batch_size"]) if isinstance(b, int) and b < 2]
    if objective == "kto" and small:
        where = sidecar if opts.sources.get("batch_size") == "sidecar" and sidecar else home_toml
        raise SubmissionError(f"{where.name}: batch_size = {small[0]}: KTO measures its baseline on the other answers "
                              f"of a batch, so a batch needs at least 2. Fix: set batch_size = 2 or more in "
                              f"{where.name} (grad_accum keeps the effective batch).")


def _check_scored_by_eval_file(sub: Submission, home_toml: Path) -> None:
    """Ranking by an eval report's scores needs an eval file to score (one dropped beside the dataset, the owner's,
    or a parent's the run inherits): without one the ranking would fall back to the loss unsaid."""
    metric = sub.options.values.get("select_metric")
    if metric not in evalreport.SCORES or sub.eval_count is not None or sub.options.values.get("init_adapter"):
        return
    where = (sub.sidecar if sub.options.sources.get("select_metric") == "sidecar" and sub.sidecar else home_toml).name
    beside = f"{stem_of(sub.dataset)}{EVAL_SUFFIX}"
    raise SubmissionError(f"{sub.dataset.name}: select_metric = \"{metric}\" (set in {where}) ranks by the eval "
                          f"report's scores on an eval file, and none applies (no {beside} beside the dataset, no "
                          f"eval_file in overnight.toml). Fix: drop {beside} (JSON lines of prompt and reference) "
                          f"with the dataset, or rank by eval_loss.")


def _check_reward_accuracy(opts: Resolved, objective: str, why: str, dataset: Path, sidecar: Path | None,
                           home_toml: Path) -> None:
    """Ranking by reward accuracy needs DPO (its eval measures it) and an eval split of pairs to measure it on:
    without them the ranking would fall back to the loss unsaid."""
    where = (sidecar if opts.sources.get("select_metric") == "sidecar" and sidecar else home_toml).name
    said = (f'select_metric = "{evalreport.REWARD_ACCURACY}" (set in {where}) ranks by the share of eval pairs '
            f'whose chosen answer')
    if objective != "dpo":
        raise SubmissionError(f"{dataset.name}: {said} a DPO run prefers, and {dataset.name} trains with objective "
                              f"{objective} ({why}). Fix: rank by another select_metric (eval_loss, or exact, "
                              f"similarity, rougeL with an eval file).")
    if not any(isinstance(f, (int, float)) and f > 0 for f in sweep.values_of(opts.values["eval_fraction"])):
        raise SubmissionError(f"{dataset.name}: {said} the run prefers, and eval_fraction = 0 holds no pairs out to "
                              f"measure it on. Fix: set eval_fraction = 0.1 (or more) in {where}.")




def load_options(sidecar: Path | None, home_toml: Path) -> Resolved:
    """The options of a drop: overnight.toml < the sidecar, each file with all its errors, and a sweep's cap."""
    try:
        opts = resolve(load_home_toml(home_toml), load_sidecar(sidecar))
        sweep.check_cap(opts, sidecar)
        sweep.check_inert(opts, sidecar)
    except OptionsError as e:
        err = SubmissionError(str(e))
        err.__context__ = e  # its errors one by one, for check
        raise err from None
    return opts


def finish(sub: Submission, home_toml: Path, require_model: bool = True, show: int = 0) -> Any:
    """The checks that need the base model, in the daemon's order: the models (and their context), the adapter
    continued from, every record through the run's template, and the records max_length would drop. Returns the
    parent adapter (lineage.Parent) or None."""
    parent = check_models(sub.options, sub.sidecar, home_toml, require_model)
    if sub.trained is None:
        sub.trained = as_trained(sub, home_toml.parent, show)
    check_truncation(sub)
    return parent


def check_models(opts: Resolved, sidecar: Path | None, home_toml: Path, require_model: bool = True) -> Any:
    """The base models (none named: an error only when required) and the adapter the options continue from."""
    if opts.base_models or require_model:
        check_base_models(opts, sidecar, home_toml)
    parent = check_parent(opts, home_toml)
    if parent is not None:
        inherit_template(opts, parent)
        check_template_fits(opts, parent)
        inherit_lora(opts, parent)
    return parent


@dataclass
class AsTrained:
    """The dataset as the run will lay it out (daemon/core/as_trained.py), and the choices that shaped it."""

    view: Any  # as_trained.TrainedView
    fmt: Any  # templating.ChatFormat or None
    as_chat: bool
    folder: Path | None
    max_length: int
    counted: bool  # lengths in the base model's tokens (its tokenizer.json is there)
    chat_form: bool = False  # the records are conversations (chat schemas, preference records as messages)


def as_trained(sub: Submission, root: Path, show: int = 0) -> AsTrained | None:
    """Every record rendered through the run's chat template and prompt format (the trainer's own choice; a record
    the template refuses is an error) and counted in the base model's tokens. Imported here, not at daemon start:
    the template renderer and the tokenizer load only while a drop is validated."""
    text = sub.report.schema in datasets.TEXT_SCHEMAS
    if not sub.options.base_models:
        show = 0  # how a record is laid out (template, prompt format, special tokens) is the base model's
    if text and not show:
        return None
    folder = model_folder(sub.options.base_models[0], root) if sub.options.base_models else None
    if sub.options.base_models and folder is None:
        return None  # a model not found: check_base_models says so; its template is unknown until it is there
    from daemon.core.as_trained import (TrainedView, add_template_tokens, load_tokenizer, missing_specials, text_blocks,
                                        view)
    from daemon.core.templating import (TemplateError, for_run, no_template, prompt_as_chat, special_tokens,
                                        with_stand_ins)

    values = sweep.first_run(sub.options).values  # a sweep: the grid's first run
    try:
        with _set_in(sub, "chat_template"):
            fmt = for_run(values["chat_template"], folder, (root,))  # where the trainer looks too
        chat_form = _chat_form(sub)
        if folder is None and fmt is None:
            # no base model yet (check outside a home) and no chat_template named: the template is the model's, not
            # known until one is set, so there is nothing to render through; the records were validated as data,
            # and check says the drop needs a base model
            return AsTrained(TrainedView(), None, values["prompt_format"] == "chat", None, values["max_length"],
                             False, chat_form)
        if folder is None:
            fmt = with_stand_ins(fmt)
        with _set_in(sub, "prompt_format"):
            as_chat = prompt_as_chat(values["prompt_format"], fmt)
        if fmt is None and chat_form:
            with _set_in(sub, "base_model"):
                raise no_template(sub.options.base_models[0])
        max_length = values["max_length"]
        if sub.options.sources.get("max_length") == "default":  # adapts to a shorter context, as the trainer does
            max_length = min(max_length, model_context(folder) or max_length)
        eos = special_tokens(folder).get("eos_token", "")
        tokenizer = load_tokenizer(folder) if show or not text else None
        lacking = missing_specials(tokenizer, fmt) if tokenizer is not None else []
        if lacking and values["chat_template"] != "auto" and not text:  # as the trainer extends it
            add_template_tokens(tokenizer, fmt)
        elif lacking and not text:
            sub.report.notes.append(
                f"the model's chat template writes {', '.join(lacking)}, which its tokenizer "
                f"does not have as tokens: they train as pieces of text, and a server would not stop on them (a "
                f"template pasted onto another model?). Fix: name the template's family (chat_template = \"FAMILY\") "
                f"so they are added as tokens, or give the model the tokenizer its template came with")
        if text and tokenizer is not None:  # packed into blocks of max_length, every token trained: shown so
            seen = TrainedView(shown=text_blocks(datasets.iter_examples(sub.dataset), tokenizer, eos, max_length,
                                                 show))
            return AsTrained(seen, fmt, as_chat, folder, max_length, False, chat_form)
        seen = view(datasets.iter_examples(sub.dataset), fmt, as_chat, eos, tokenizer, max_length, show,
                    sub.dataset.name)
    except (TemplateError, datasets.DatasetError) as e:  # a pair whose prompt fills max_length: named
        raise SubmissionError(str(e)) from None
    if seen.identical:
        sub.report.notes.append(f"{seen.identical} pair(s) become identical once cut to max_length = {max_length} "
                                f"tokens (chosen and rejected differ only after the cut): they teach nothing; raise "
                                f"max_length to keep them")
    return AsTrained(seen, fmt, as_chat, folder, max_length, tokenizer is not None, chat_form)


@contextmanager
def _set_in(sub: Submission, key: str) -> Iterator[None]:
    """A TemplateError about the value of `key` starts with the file it is set in, as the options' own errors do
    (a record's error names its dataset and record instead)."""
    from daemon.core.templating import TemplateError

    try:
        yield
    except TemplateError as e:
        where = sub.options.origin(key)
        raise TemplateError(f"{where}: {e}" if where else str(e)) from None


def _chat_form(sub: Submission) -> bool:
    """Records that are conversations (chat schemas, and preference records given as messages) need a template."""
    if sub.report.schema in datasets.CHAT_SCHEMAS:
        return True
    if sub.report.schema not in datasets.PREFERENCE_SCHEMAS:
        return False
    first = next(datasets.iter_examples(sub.dataset), None)
    return first is not None and "messages" in first


def check_truncation(sub: Submission) -> None:
    """More than half the records with nothing of their answer left once cut to max_length: the run would
    train on a sliver of the data, so the drop is refused unless allow_truncation says that is meant."""
    t = sub.trained
    if t is None or not t.counted or sub.options.values.get("allow_truncation"):
        return
    v = t.view
    if v.lengths.count and (v.dropped + v.identical) * 2 > v.lengths.count:
        longest = v.lengths.summary()["max"]
        lost = [f"{v.dropped} of {v.lengths.count} records would be dropped" if v.dropped else "",
                f"{v.identical} pair(s) would become identical" if v.identical else ""]
        raise SubmissionError(
            f"{sub.dataset.name}: {' and '.join(x for x in lost if x)}: cut to max_length = {t.max_length} tokens, "
            f"nothing of their answer is left to learn. Fix: raise max_length (the longest record has "
            f"{longest}{' or more' if v.capped else ''} tokens), or set allow_truncation = true.")


def pair(files: list[Path]) -> tuple[dict[str, dict[str, Path]], dict[str, list[Path]]]:
    """The drops in a listing, each by role, keyed by stem; and the stems refused as ambiguous.

    Datasets sharing a stem (x.jsonl, x.csv) are two drops keyed by their file names while nothing else has the
    stem; beside x.toml or x.probes.jsonl nobody can tell which dataset those belong to, so the stem is refused.
    """
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        if p.is_file() and not p.is_symlink():
            by_stem.setdefault(stem_of(p), []).append(p)
    drops: dict[str, dict[str, Path]] = {}
    twins: dict[str, list[Path]] = {}
    for stem, group in by_stem.items():
        roles = [role_of(p) for p in group]
        if roles.count("dataset") < 2:
            drops[stem] = dict(zip(roles, group))
        elif "sidecar" in roles or "probes" in roles or "eval" in roles or any(p.name in by_stem for p in group):
            twins[stem] = group
        else:
            drops.update({p.name: {role: p} for role, p in zip(roles, group)})
    return drops, twins


def twins_message(stem: str, group: list[Path]) -> str:
    names = " and ".join(p.name for p in group if role_of(p) == "dataset")
    return (f"{names} are both named {stem}: a sidecar or probe file could not tell which one it belongs to. "
            f"Fix: rename one of them and drop them again.")


def check_pairing(path: Path) -> None:
    """The inbox's pairing rule applied to the files beside `path`: refused as the daemon would refuse them."""
    try:
        files = sorted(p for p in path.parent.iterdir() if not ignored(p.name))  # as the inbox lists them
    except OSError:
        return
    _drops, twins = pair(files)
    for stem, group in twins.items():
        if path.name in {p.name for p in group}:
            raise SubmissionError(twins_message(stem, group))


def check_base_models(opts: Resolved, sidecar: Path | None, home_toml: Path) -> None:
    """Every named base model must exist locally; none named at all is an error with the fix."""
    if not opts.base_models:
        raise SubmissionError(
            f"no base model is named for this dataset: neither {sidecar.name if sidecar else 'a sidecar NAME.toml'} "
            f"nor {home_toml} sets base_model. Fix: add base_model = \"/path/to/model\" to {home_toml} "
            f"(the machine's default) or to the dataset's sidecar.")
    for spec in opts.base_models:
        try:
            locate_model(spec, home_toml.parent)  # not the daemon's cwd: the trainer it starts runs in the run folder
        except ModelNotFound as e:
            where = sidecar if opts.sources.get("base_model") == "sidecar" else home_toml
            raise SubmissionError(f"{where}: {e}") from None
        folder = model_folder(spec, home_toml.parent)
        if folder is not None and not has_weights(folder):
            where = sidecar if opts.sources.get("base_model") == "sidecar" else home_toml
            raise SubmissionError(f"{where}: the base model folder {folder} has a config.json but no weights "
                                  f"(*.safetensors, *.bin or their index file), so the run would fail when it "
                                  f"loads the model. Fix: download the weights into {folder} (hf download NAME "
                                  f"--local-dir {folder}), or point base_model at a complete model folder.")
        _check_context(opts, spec, sidecar, home_toml)
        _check_targets(opts, spec, folder, sidecar, home_toml)


def _check_targets(opts: Resolved, spec: str, folder: Path | None, sidecar: Path | None, home_toml: Path) -> None:
    """lora_targets must name layers of the base model: read from its weights' headers (no weight is loaded), so a
    wrong name is refused at the drop, not by every run of a sweep after it loaded the model."""
    targets = opts.values["lora_targets"]
    names = layer_names(folder) if folder is not None and targets != "all-linear" else None
    if names is None or not targets_missing(targets, names):
        return
    where = sidecar if opts.sources.get("lora_targets") == "sidecar" else home_toml
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    shown = ", ".join(f'"{n}"' for n in leaves[:24]) + (", …" if len(leaves) > 24 else "")
    fix = f'lora_targets = ["{_example(leaves)[0]}", "{_example(leaves)[1]}"]'
    if isinstance(targets, str):
        raise SubmissionError(f"{where}: lora_targets = {json.dumps(targets, ensure_ascii=False)} is not a regular "
                              f"expression Python can compile (a string other than \"all-linear\" is one, over the "
                              f"model's module names). Fix: list layer names instead, e.g. {fix} (the layers of "
                              f"{spec} end in: {shown}), or use lora_targets = \"all-linear\" (the default).")
    raise SubmissionError(f"{where}: lora_targets = {json.dumps(targets, ensure_ascii=False)} names no layer of the "
                          f"base model {spec} (its layers LoRA can adapt end in: {shown}). Fix: list some of "
                          f"those, e.g. {fix}, or use lora_targets = \"all-linear\" (the default).")


def _example(leaves: list[str]) -> tuple[str, str]:
    """Two layer names for the fix: attention's q and v projections where the model has them."""
    if "q_proj" in leaves and "v_proj" in leaves:
        return "q_proj", "v_proj"
    rest = [n for n in leaves if n not in ("lm_head", "embed_tokens", "wte", "wpe")] or leaves
    return rest[0], rest[min(1, len(rest) - 1)]


def _check_context(opts: Resolved, spec: str, sidecar: Path | None, home_toml: Path) -> None:
    """An explicit max_length within the model's context (a default one adapts: context_note)."""
    context = model_context(model_folder(spec, home_toml.parent))
    max_length = max(sweep.values_of(opts.values["max_length"]))  # a sweep or a search: its longest
    if context is not None and max_length > context and opts.sources.get("max_length") != "default":
        where = sidecar if opts.sources.get("max_length") == "sidecar" else home_toml
        raise SubmissionError(f"{where}: max_length = {max_length} is longer than the context of {spec} "
                              f"({context} positions, max_position_embeddings in its config.json). Fix: set "
                              f"max_length = {context} or less (or leave it unset: the default adapts).")