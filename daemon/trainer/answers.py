"""What trained versions answer: a version's adapter on its base model, asked the way its run asked its probes.

The morning-after commands (`overnight ask`, `chat`, `compare --answers`) and the dashboard's Try tab all come here.
A version is asked through its run's training template (the tokenizer with the chat template saved in its adapter
folder, `encode_probe` as the evolution snapshots use it), greedily, and stops where the exported model stops (the
end-of-turn ids export writes as generation_config.json). The base model is asked through the same template and
stops as the version beside it, so the two answers differ only by what the adapter learned.

Versions of one base model share one copy of it: each adapter is loaded under its own name (peft), the base is the
model with the adapters disabled.

Run as `python -m daemon.trainer.answers` (the dashboard does, so that generation never blocks it): JSON requests
on stdin, one a line, `{"home", "refs", "base", "prompt", "max_new_tokens"}`; a JSON answer line each on stdout
(`ask --json`'s shape, with `kept`: the models were still loaded from the request before), or `{"error": …}`. The
last request's models stay loaded until its stdin closes or `--idle` seconds pass without a request.
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from daemon.core.errors import AnswerError, RefError
from daemon.core.runconfig import RunConfig
from daemon.core.rundir import RunFolder, has_weights
from daemon.core.versionpick import NoVersion, pick_version
from daemon.trainer.oom import free_memory

DEFAULT_MAX_NEW_TOKENS = 128
BASE = "base"  # the label of the base model's answers


@dataclass(frozen=True)
class Target:
    """One model to ask: a registered version (its adapter), or the base model through a version's template."""

    label: str  # "support:2", or "base"
    run_dir: Path  # the run whose base model and prompt format are used
    adapter: Path | None  # the weights added to the base; None: the base model alone
    contract: Path  # the adapter folder whose tokenizer (chat template) and generation_config.json are used


# --------------------------------------------------------------------------------- which versions (torch-free)

def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` (its active version) or `NAME:V` (`NAME:vV` too)."""
    name, sep, version = unicodedata.normalize("NFC", ref).rpartition(":")
    if not sep:
        return version, None
    digits = version[1:] if version[:1] in "vV" else version
    if not name or not digits.isdigit():
        raise RefError(f"{ref!r} is not a model version. Fix: write NAME (its active version) or NAME:VERSION, "
                       f"e.g. support:2 (see overnight models).")
    return name, int(digits)


def targets(home: Path, refs: Sequence[str], base: bool) -> list[Target]:
    """The versions `refs` name, in order (each once), then the base model of the first when `base`."""
    from daemon.core.home import Home
    from daemon.core.queries import Reader

    if not refs:
        raise RefError("name a model version to ask (NAME or NAME:VERSION): --base asks that version's base model "
                       "through its template. Fix: e.g. overnight ask support --base \"a question\".")
    reader = Reader(Home(home).db)
    models = reader.models()
    found: list[Target] = []
    for ref in refs:
        name, version = parse_ref(ref)
        try:
            row = pick_version(models, name, version)
        except NoVersion as e:
            kept = f"; its adapter is kept at {e.trashed['adapter_path']}" if e.trashed else ""
            raise RefError(f"no model version {ref!r}: {e.why}{kept}. Fix: {e.fix}.") from None
        adapter = Path(row["adapter_path"])
        if not (adapter / "adapter_config.json").is_file():
            raise AnswerError(f"{name}:{row['version']} has no adapter at {adapter}. Fix: restore that folder "
                              f"(overnight never deletes an adapter by itself), or ask another version.")
        if not has_weights(adapter):
            raise AnswerError(f"{name}:{row['version']}'s adapter at {adapter} has no weights file "
                              f"(adapter_model.safetensors). Fix: put it back, or ask another version.")
        run = reader.run(row["run_id"])
        label = f"{name}:{row['version']}"
        if run is None:
            raise AnswerError(f"{label} names run {row['run_id']}, which overnight.db does not list. Fix: overnight "
                              f"doctor --rebuild (the DB is rebuilt from the run folders).")
        if all(t.label != label for t in found):
            found.append(Target(label, Path(run["run_dir"]), adapter, adapter))
    if base and found:  # asked as the first version is: its template, its stops
        found.append(Target(BASE, found[0].run_dir, None, found[0].contract))
    return found


def _run_options(run_dir: Path) -> dict[str, Any]:
    return RunConfig.read(run_dir).options


def base_source(home: Path, run_dir: Path) -> tuple[str, Path | None]:
    """The run's base model as the trainer found it (`locate_model`: one rule), and its folder."""
    from daemon.core.basemodel import ModelNotFound, locate_model

    spec = _run_options(run_dir).get("base_model")
    if not isinstance(spec, str) or not spec:
        raise AnswerError(f"{run_dir / 'config.json'} names no base model. Fix: ask a version trained by this "
                          f"overnight (its run folder records the base model).")
    try:
        found = locate_model(spec, home, run_dir, Path.cwd())
    except ModelNotFound as e:
        raise AnswerError(f"cannot find the base model of {run_dir.name}: {e.problem}. Fix: put that model back where "
                          f"the run found it (or into the Hugging Face cache).") from None
    return found.source, found.folder


def prompt_is_chat(home: Path, run_dir: Path, folder: Path | None) -> bool:
    """Whether the run asked its prompts as a user turn, as training did: what its stats.json says the trainer
    decided, else (a run from before it said so) prompt_format and the run's chat template, found again."""
    from daemon.core.templating import TemplateError, for_run, prompt_as_chat

    decided = _read_json(RunFolder(run_dir).stats).get("prompt_format")
    if decided in ("chat", "raw"):  # a chat_template .jinja moved or edited since changes nothing
        return decided == "chat"
    options = _run_options(run_dir)
    try:
        fmt = for_run(str(options.get("chat_template") or "auto"), folder, (home,))
        return prompt_as_chat(str(options.get("prompt_format") or "auto"), fmt)
    except TemplateError:
        return False  # the run trained, so its template worked then; the adapter's tokenizer holds it


# --------------------------------------------------------------------------------- where to run (torch-free)

def _nvml_index() -> int:
    """The NVML index of the GPU torch calls cuda:0 (CUDA_VISIBLE_DEVICES names it, when it names indices)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def placement(home: Path, sources: Sequence[tuple[str, Path | None]], cuda: bool) -> tuple[str, str]:
    """("cuda" or "cpu", why): the GPU only when the base models' weights fit in the memory NVML says is free,
    leaving a training run on this home half of it to grow into (its batch, its evaluation); else the CPU. A
    training run never loses memory it had: the answers take only what is free, and less of it while one trains."""
    from daemon.core.home import Home
    from daemon.core.preflight import FIT_SHARE, GIB, Shape, gpu_free_bytes
    from daemon.core.queries import Reader
    from daemon.core.states import ACTIVE

    if not cuda:
        return "cpu", "no GPU"
    free = gpu_free_bytes(_nvml_index())
    if free is None:
        return "cpu", "the GPU's free memory is unknown (no NVML)"
    training = bool(Reader(Home(home).db).runs(tuple(ACTIVE)))
    need = GIB  # the generation's own working memory: cache, logits
    for _, folder in sources:
        config = _read_json(folder / "config.json") if folder else {}
        shape = Shape.from_config(config)
        if shape is None:
            return "cpu", "no memory estimate for this model's architecture"
        need += 2 * (shape.linear_params + shape.other_params)  # 16-bit weights
    room = free / 2 if training else FIT_SHARE * free
    where = "beside the training run" if training else "on the GPU"
    if need > room:
        return "cpu", (f"{need / GIB:.1f} GiB needed, {room / GIB:.1f} GiB of the {free / GIB:.1f} GiB free may be "
                       f"used {where}")
    return "cuda", f"{need / GIB:.1f} GiB of the {free / GIB:.1f} GiB free" + (", beside the training run"
                                                                              if training else "")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------- the models (torch)

@dataclass
class Voice:
    """One target loaded: its shared model, its adapter's name there (None: the base), how it is asked."""

    target: Target
    model: Any
    adapter_name: str | None
    tokenizer: Any
    stop_ids: list[int]
    chat: bool  # prompts are asked as a user turn


class Answerer:
    """The targets loaded on `device` ("cpu" or "cuda"), ready to answer."""

    def __init__(self, home: Path, chosen: Sequence[Target], device: str = "cpu",
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.home, self.device = Path(home), device
        self.voices: list[Voice] = []
        groups: dict[tuple[str, bool], list[Target]] = {}
        for t in chosen:
            source, _ = base_source(self.home, t.run_dir)
            groups.setdefault((source, _run_options(t.run_dir).get("trust_remote_code") is True), []).append(t)
        for (source, trusted), members in groups.items():
            self.voices += self._load(source, trusted, members, log)

    def _load(self, source: str, trusted: bool, members: list[Target], log: Callable[[str], None]) -> list[Voice]:
        from daemon.trainer.libquiet import quiet_model_loading

        quiet_model_loading()  # noise between a person's turns
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        cuda = self.device == "cuda"
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
        log(f"loading base model {source} on {self.device} …")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype,
                                                         trust_remote_code=trusted)
        except Exception as e:  # noqa: BLE001 - a load failure is the user's to fix, never a traceback
            raise AnswerError(f"cannot load base model {source}: {_first_line(e)}. Fix: check that the folder (or "
                              f"the HF cache entry) is a complete causal-LM download (nothing is downloaded).") from None
        tokenizers = {t.label: _tokenizer(t, source, trusted) for t in members}
        base_width = model.get_input_embeddings().weight.shape[0]
        grown = {len(tokenizers[t.label]) for t in members if t.adapter is not None} - {base_width}
        if len(grown) > 1:  # each adapter carries its own rows for the tokens its template added: one model cannot
            raise AnswerError(f"{', '.join(t.label for t in members)} added different tokens to {source} (their chat "
                              f"templates differ), so one loaded model cannot hold them side by side. Fix: ask them "
                              f"one at a time.")
        width = max(len(tok) for tok in tokenizers.values())
        if width > base_width:  # tokens the run's chat template added, as export
            _grow_embeddings(model, width)
        names: dict[str, str] = {}
        # adapters that added no tokens load first: peft cannot load a plain one after one whose token rows it wraps
        adapters = sorted((m for m in members if m.adapter is not None),
                          key=lambda m: len(tokenizers[m.label]) > base_width)
        for i, t in enumerate(adapters):
            names[t.label] = name = f"v{i}"  # peft's module keys: no dots or colons
            try:
                if isinstance(model, PeftModel):
                    model.load_adapter(str(t.adapter), adapter_name=name)
                else:
                    model = PeftModel.from_pretrained(model, str(t.adapter), adapter_name=name)
            except Exception as e:  # noqa: BLE001
                raise AnswerError(f"cannot apply the adapter {t.adapter} to {source}: {_first_line(e)}. Fix: ask "
                                  f"the version on the base model its run trained on (config.json).") from None
        model.to(self.device).eval()
        _, folder = base_source(self.home, members[0].run_dir)
        return [Voice(t, model, names.get(t.label), tokenizers[t.label], _stop_ids(t, tokenizers[t.label]),
                      prompt_is_chat(self.home, t.run_dir, folder)) for t in members]

    @contextlib.contextmanager
    def _speaking(self, voice: Voice) -> Iterator[None]:
        import torch

        with torch.no_grad():
            if voice.adapter_name is not None:
                voice.model.set_adapter(voice.adapter_name)
                yield
            elif hasattr(voice.model, "disable_adapter"):
                with voice.model.disable_adapter():
                    yield
            else:
                yield

    def encoded(self, voice: Voice, question: str | list[dict[str, Any]]) -> Any:
        """The question as the run's probes were laid out (`encode_probe`): a prompt, or a conversation."""
        from daemon.trainer.snapshots import encode_probe

        if isinstance(question, list):
            if not voice.chat:
                raise AnswerError(f"{voice.target.label} was trained on raw prompts, not conversations. Fix: ask it "
                                  f"a prompt (one line of text).")
            users = [m["content"] for m in question if m.get("role") == "user"]
            probe = {"prompt": users[-1] if users else "", "reference": "", "messages": question}
        elif voice.chat:
            probe = {"prompt": question, "reference": "", "messages": [{"role": "user", "content": question}]}
        else:
            probe = {"prompt": question, "reference": "", "messages": None}
        return encode_probe(voice.tokenizer, probe, voice.stop_ids)

    def answer(self, questions: Sequence[str | list[dict[str, Any]]],
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 8) -> dict[str, list[str]]:
        """Each target's greedy answers to `questions`, by label, in target order."""
        from daemon.trainer.snapshots import generate_answers

        out: dict[str, list[str]] = {}
        for voice in self.voices:
            encoded = [self.encoded(voice, q) for q in questions]
            texts: list[str] = []
            with self._speaking(voice):
                for i in range(0, len(encoded), batch_size):
                    texts += generate_answers(voice.model, voice.tokenizer, encoded[i:i + batch_size],
                                              voice.stop_ids, max_new_tokens)
            out[voice.target.label] = texts
        return out

    def stream(self, label: str, question: str | list[dict[str, Any]],
               max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Iterator[str]:
        """One target's greedy answer, piece by piece as tokens are generated (transformers' streamer). Leaving the
        loop early (Ctrl-C in a chat) stops the generation at its next token and waits for it."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        halt = threading.Event()

        class Halted(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

        voice = next(v for v in self.voices if v.target.label == label)
        enc = self.encoded(voice, question)
        ids = torch.tensor([enc.prompt_ids], device=self.device)
        tok = voice.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else voice.stop_ids[0]
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=voice.stop_ids or None, pad_token_id=pad)
        failed: list[BaseException] = []

        def generate() -> None:
            try:
                with self._speaking(voice):
                    voice.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         generation_config=config, streamer=streamer,
                                         stopping_criteria=StoppingCriteriaList([Halted()]))
            except BaseException as e:  # noqa: BLE001 - handed to the reader below
                failed.append(e)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        try:
            worker.start()  # inside: a Ctrl-C the moment it starts still ends it
            yield from streamer
        finally:  # a reader that stopped early (Ctrl-C): the generation ends at its next token
            halt.set()
            if worker.ident is not None:
                worker.join()
        if failed:
            raise failed[0]


def _tokenizer(t: Target, source: str, trusted: bool) -> Any:
    """The tokenizer the run trained with: the adapter folder's (its chat template), else the base model's."""
    from transformers import AutoTokenizer

    contract = t.contract if (t.contract / "tokenizer_config.json").is_file() else source
    try:
        tok = AutoTokenizer.from_pretrained(str(contract), local_files_only=True, trust_remote_code=trusted)
    except Exception as e:  # noqa: BLE001
        raise AnswerError(f"cannot load the tokenizer of {t.label} from {contract}: {_first_line(e)}. Fix: restore "
                          f"the adapter folder, or the base model's tokenizer files.") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _stop_ids(t: Target, tokenizer: Any) -> list[int]:
    """Where the exported model stops: generation_config.json's eos ids (the run's end-of-turn tokens), else eos."""
    ids: set[int] = set()
    if (t.contract / "generation_config.json").is_file():
        eos = _read_json(t.contract / "generation_config.json").get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300].rstrip(".") if text else type(e).__name__


# --------------------------------------------------------------------------------- one request, as JSON

class Asker:
    """Answers requests one after another, keeping the last request's models loaded: the next prompt to the same
    versions (the same registry rows) skips the load, which is most of a request's time on a big model."""

    def __init__(self, device: str = "auto", log: Callable[[str], None] = lambda line: None) -> None:
        self.device, self.log = device, log
        # what the last request loaded: its (home, targets), the models, where they run and why
        self._loaded: tuple[tuple[Path, tuple[Target, ...]], Answerer, str, str] | None = None
        self.kept = False  # the last request found its models loaded by the one before

    def ask(self, home: Path, refs: Sequence[str], prompt: str, base: bool = False,
            max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict[str, Any]:
        if not prompt.strip():  # a raw prompt of no tokens cannot be generated from
            raise AnswerError("the prompt is empty. Fix: give the question last: overnight ask NAME \"your question\"")
        chosen = targets(home, refs, base)
        key = (Path(home), tuple(chosen))
        self.kept = self._loaded is not None and self._loaded[0] == key
        if not self.kept:
            if self._loaded is not None:  # the models of the request before leave memory before the next ones load
                self._loaded = None
                free_memory()
            where, why = pick_device(home, chosen, self.device)
            self._loaded = (key, Answerer(home, chosen, where, self.log), where, why)
        _, answerer, where, why = self._loaded
        answers = answerer.answer([prompt], max_new_tokens)
        return {"prompt": prompt, "device": where, "device_why": why,
                "answers": [{"model": label, "answer": texts[0]} for label, texts in answers.items()]}


def ask(home: Path, refs: Sequence[str], prompt: str, base: bool = False,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, log: Callable[[str], None] = lambda line: None,
        device: str = "auto") -> dict[str, Any]:
    """`overnight ask --json`'s answer: {"prompt", "device", "device_why", "answers": [{"model", "answer"}]}."""
    return Asker(device, log).ask(home, refs, prompt, base, max_new_tokens)


def pick_device(home: Path, chosen: Sequence[Target], device: str = "auto") -> tuple[str, str]:
    """`device` ("auto", "cpu", "cuda") decided: "auto" follows `placement`."""
    import torch

    if device == "cpu":
        return "cpu", "asked for"
    cuda = torch.cuda.is_available()
    if device == "cuda":
        if not cuda:
            raise AnswerError("--device cuda, but torch sees no GPU. Fix: use --device auto or cpu.")
        return "cuda", "asked for"
    sources = {base_source(home, t.run_dir) for t in chosen}
    return placement(home, sorted(sources, key=lambda s: s[0]), cuda)


class _Lines:
    """Lines from a file descriptor, each waited for at most `idle` seconds (None: forever)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def next(self, idle: float | None) -> str | None:
        """The next line; None at the end of the input or when `idle` seconds pass without one."""
        while b"\n" not in self.buffer:
            if idle is not None and not select.select([self.fd], [], [], idle)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:  # the end: a last request without its newline still counts
                rest, self.buffer = self.buffer, b""
                return rest.decode("utf-8", errors="replace") if rest.strip() else None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")


def _answer(asker: Asker, line: str) -> dict[str, Any]:
    try:
        request = json.loads(line)
        answer = asker.ask(Path(request["home"]), request["refs"], request["prompt"], bool(request.get("base")),
                           int(request.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS))
        return {**answer, "kept": asker.kept}
    except (AnswerError, RefError) as e:
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - the dashboard shows one line, never this process's traceback
        return {"error": f"{type(e).__name__}: {_first_line(e)}"}


def main(argv: Sequence[str] = ()) -> int:
    """The dashboard's worker: a JSON request a line on stdin, a JSON answer a line on stdout; a user's error as
    {"error"}. `--nice N`: run N steps below the caller's CPU priority (a training run beside it keeps its pace).
    `--idle S`: end after S seconds without a request (the loaded models give their memory back)."""
    args = list(argv)
    if "--nice" in args:
        os.nice(int(args[args.index("--nice") + 1]))
    idle = float(args[args.index("--idle") + 1]) if "--idle" in args else None
    asker, lines = Asker(), _Lines(sys.stdin.fileno())
    while (line := lines.next(idle)) is not None:
        if line.strip():
            sys.stdout.write(json.dumps(_answer(asker, line), ensure_ascii=False) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def _grow_embeddings(model: Any, width: int) -> None:
    """Rows for the tokens a run's template added, each the mean of the base's rows: where the run started them
    (model.fit_embeddings), so the base model's answer through that template is the same every time (an adapter
    brings its own rows for them)."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(width, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m}.values():
            layer.weight[old:] = layer.weight[:old].mean(dim=0)
