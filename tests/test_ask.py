"""The morning after, through the CLI: `overnight ask`, `chat` and `compare --answers` on two versions of one name
trained by the real daemon on the tiny model, each answer checked against the exported model."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import overnight
from tests.conftest_trainer import reversal_records

pytestmark = pytest.mark.e2e

RECORDS = [r for r in reversal_records(40, seed=2)]
PROMPT = RECORDS[0]["prompt"]  # a trained prompt
FAST = ("max_steps = 8\nbatch_size = 4\nmax_length = 48\nlog_every = 4\nsave_every = 8\nlearning_rate = 3e-3\n"
        "probe_max_new_tokens = 4\neval_fraction = 0\nlora_dropout = 0.0\nprobe_count = 3\n")
TOKENS = "12"


def _drop(home: Path, sidecar: str) -> None:
    (home / "inbox" / "rev.toml").write_text(sidecar)
    (home / "inbox" / "rev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """rev:1 (8 steps), then rev:2 continued from it for 8 more steps at a higher rate: two different versions."""
    home = tmp_path_factory.mktemp("ask") / "home"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _drop(home, FAST)
    _drop(home, FAST.replace("3e-3", "1e-2") + 'init_adapter = "rev:1"\n')
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [(m["name"], m["version"]) for m in models] == [("rev", 1), ("rev", 2)]
    return home


def _exported_answer(home: Path, run: str, out: Path, prompt: str, base: Path | None = None) -> str:
    """What `overnight export --merge` + transformers' generate answer (greedy), the prompt laid out as the run
    laid it out: through the chat template when the model has one, else the raw prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base is None:
        overnight("export", run, str(out), "--merge", home=home, check=True, timeout=300)
    folder = base or out
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)  # the run's tokenizer: its template, its specials
    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    stop = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    stop = stop if isinstance(stop, list) else [stop]
    row = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(TOKENS), do_sample=False,
                         eos_token_id=stop, pad_token_id=tok.pad_token_id or stop[0])[0, ids.shape[1]:].tolist()
    cut = next((k for k, t in enumerate(row) if t in stop), len(row))
    return tok.decode(row[:cut], skip_special_tokens=True).strip()


def test_ask_two_versions_and_the_base_match_their_exported_models(two_versions: Path, tmp_path: Path,
                                                                  tiny_model: Path) -> None:
    home = two_versions
    out = overnight("ask", "rev:1", "rev:2", PROMPT, "--base", "--json", "--max-new-tokens", TOKENS, home=home,
                    timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    answers = {a["model"]: a["answer"] for a in result["answers"]}
    assert list(answers) == ["rev:1", "rev:2", "base"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # the suite's choice (conftest): auto must pick the CPU
    assert (result["device"], result["device_why"]) == ("cpu", "no GPU")
    assert len(set(answers.values())) == 3, answers
    runs = {m["version"]: m["run_id"] for m in json.loads(overnight("models", "--json", home=home).stdout)}
    v1 = _exported_answer(home, runs[1], tmp_path / "v1", PROMPT)
    assert answers["rev:1"] == v1
    assert answers["rev:2"] == _exported_answer(home, runs[2], tmp_path / "v2", PROMPT)
    assert answers["base"] == _exported_answer(home, runs[1], tmp_path / "v1", PROMPT, base=tiny_model)

    text = overnight("ask", "rev", PROMPT, "--max-new-tokens", TOKENS, home=home, timeout=300, check=True).stdout
    assert "rev:2" in text and answers["rev:2"].split()[0] in text  # NAME: the active version, the newest


def test_ask_refuses_an_unknown_version_in_one_line(two_versions: Path) -> None:
    out = overnight("ask", "rev:7", PROMPT, home=two_versions)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "rev:7" in out.stderr and "rev has no version 7 (it has 1, 2)" in out.stderr and "Fix:" in out.stderr
    out = overnight("ask", "rev", " ", home=two_versions)
    assert out.returncode == 1 and "the prompt is empty" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_the_dashboards_answers_process_keeps_its_models_loaded_between_prompts(two_versions: Path) -> None:
    """The Try tab's worker: a request a line, an answer line each; the same versions asked again are answered by
    the models already loaded, other versions load theirs, a bad one is an error line, and it ends itself when idle."""
    import subprocess
    import sys

    from tests.conftest import REPO

    def request(refs: list[str], base: bool = False) -> str:
        return json.dumps({"home": str(two_versions), "refs": refs, "base": base, "prompt": PROMPT,
                           "max_new_tokens": int(TOKENS)}) + "\n"

    proc = subprocess.Popen([sys.executable, "-m", "daemon.trainer.answers", "--idle", "20"], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    replies = []
    for line in (request(["rev:1"], base=True), request(["rev:1"], base=True), request(["rev:9"]),
                 request(["rev:2"]), request(["rev:2"])):
        proc.stdin.write(line)
        proc.stdin.flush()
        replies.append(json.loads(proc.stdout.readline()))
    first, again, bad, other, other_again = replies
    assert (first["kept"], again["kept"], other["kept"], other_again["kept"]) == (False, True, False, True)
    assert again["answers"] == first["answers"] and [a["model"] for a in first["answers"]] == ["rev:1", "base"]
    assert "no model version 'rev:9'" in bad["error"] and "Fix:" in bad["error"]
    assert other["answers"] == other_again["answers"] and other["answers"][0]["model"] == "rev:2"
    solo = json.loads(overnight("ask", "rev:2", PROMPT, "--json", "--max-new-tokens", TOKENS, home=two_versions,
                                check=True, timeout=300).stdout)
    assert solo["answers"] == other["answers"] and "kept" not in solo  # the CLI's shape is unchanged
    proc.stdin.close()  # the dashboard quit: the end of its input ends it
    assert proc.wait(30) == 0 and "Traceback" not in proc.stderr.read()

    idle = subprocess.Popen([sys.executable, "-m", "daemon.trainer.answers", "--idle", "1"], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert idle.wait(60) == 0  # no request for a second: it ends, its models' memory goes back
    assert idle.stdin is not None
    idle.stdin.close()


def test_chat_streams_the_answer_ask_gives(two_versions: Path) -> None:
    line = PROMPT.strip()  # the chat reads a line: what is typed, without its newline
    asked = json.loads(overnight("ask", "rev:2", line, "--json", "--max-new-tokens", TOKENS, home=two_versions,
                                 check=True, timeout=300).stdout)["answers"][0]["answer"]
    out = overnight("chat", "rev:2", "--max-new-tokens", TOKENS, home=two_versions, timeout=300,
                    input=f"{line}\n{line}\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert "chatting with rev:2 on cpu (no GPU)" in out.stdout and "Traceback" not in out.stderr
    turns = out.stdout.split("rev:2> ")
    assert len(turns) == 3  # two questions, two answers, then /exit
    assert turns[1].split("\n", 1)[0].strip() == asked


def test_ctrl_c_in_chat_stops_the_answer_and_the_chat_goes_on(two_versions: Path) -> None:
    """Ctrl-C while an answer streams stops that answer (the generation thread ends with it), the next question is
    answered, and Ctrl-D ends the chat cleanly: no abort of the process."""
    import select
    import signal
    import subprocess
    import sys
    from tests.conftest import REPO
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "chat", "rev:2", "--base", "--max-new-tokens", "100000",
                             "--home", str(two_versions)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None

    def read_until(done: Callable[[str], bool], timeout: float = 120) -> str:
        seen, end = b"", time.monotonic() + timeout
        while not done(seen.decode(errors="replace")) and time.monotonic() < end:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        return seen.decode(errors="replace")

    try:
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        streaming = read_until(lambda s: len(s.partition("base> ")[2]) > 10)  # the answer is coming
        proc.send_signal(signal.SIGINT)
        stopped = read_until(lambda s: "you> " in s)
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        again = read_until(lambda s: len(s.partition("base> ")[2]) > 10)
        proc.send_signal(signal.SIGINT)
        read_until(lambda s: "you> " in s)
        proc.stdin.close()
        assert proc.wait(120) == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finally:
        proc.kill()
    assert "base> " in streaming and "[stopped]" in stopped and "base> " in again
    assert b"terminate called" not in (proc.stderr.read() if proc.stderr else b"")


def test_compare_answers_scores_each_version_on_the_runs_probes(two_versions: Path, tmp_path: Path) -> None:
    out = overnight("compare", "--answers", "rev:1", "rev:2", "--base", "--json", "--max-new-tokens", TOKENS,
                    home=two_versions, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["prompts"]) == 3  # probe_count = 3
    for p in result["prompts"]:
        assert [a["model"] for a in p["answers"]] == ["rev:1", "rev:2", "base"]
        assert all(0 <= a["similarity"] <= 1 and isinstance(a["exact"], bool) for a in p["answers"])
    assert [s["model"] for s in result["summary"]] == ["rev:1", "rev:2", "base"]

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT, "reference": RECORDS[0]["completion"]}) + "\n"
                       + json.dumps({"prompt": "reverse: sun moon\n"}) + "\n")
    text = overnight("compare", "--answers", "rev:2", "--prompts", str(prompts), "--max-new-tokens", TOKENS,
                     home=two_versions, timeout=300, check=True).stdout
    assert "reference" in text and ("1/1 exact" in text or "0/1 exact" in text)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"prompt": PROMPT, "reference": ""}) + "\n")
    out = overnight("compare", "--answers", "rev:2", "--prompts", str(tmp_path / "empty.jsonl"), home=two_versions)
    assert out.returncode == 1 and "'reference': must be a non-empty string" in out.stderr, out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reference": "x"}\n')
    out = overnight("compare", "--answers", "rev:2", "--prompts", str(bad), home=two_versions)
    assert out.returncode == 1 and "line 1" in out.stderr and "Fix:" in out.stderr and "Traceback" not in out.stderr


def test_a_probe_asked_by_two_runs_is_compared_once(tmp_path: Path) -> None:
    """A held-out probe's reference keeps the space its completion began with; a probe file's has none."""
    from daemon.client.trying import run_probes

    a, b = tmp_path / "a", tmp_path / "b"
    for run, reference in ((a, " tea back"), (b, "tea back")):
        (run / "dataset").mkdir(parents=True)
        (run / "evolution.jsonl").write_text(json.dumps({"step": 0, "probe": 0, "prompt": "name of star:",
                                                         "reference": reference, "answer": ""}) + "\n")
    assert [p["prompt"] for p in run_probes([a, b])] == ["name of star:"]


def test_a_run_is_asked_as_it_trained_once_its_jinja_file_is_gone(tmp_path: Path) -> None:
    """A run trained with `chat_template = "my.jinja"` is asked as a conversation after that file moved: the
    trainer's own decision (stats.json) counts, not whether the file can still be found."""
    from daemon.core.runconfig import RunConfig
    from daemon.trainer.answers import prompt_is_chat

    run = tmp_path / "home" / "runs" / "mj-20261207-101010"
    run.mkdir(parents=True)
    RunConfig(run_id=run.name, options={"chat_template": "my.jinja", "prompt_format": "auto"}).write(run)
    assert not prompt_is_chat(tmp_path / "home", run, None)  # found again: nowhere, so raw (a run without stats.json)
    for decided in ("chat", "raw"):
        (run / "stats.json").write_text(json.dumps({"records": 3, "prompt_format": decided}))
        assert prompt_is_chat(tmp_path / "home", run, None) is (decided == "chat")


def test_versions_whose_templates_added_different_tokens_are_asked_one_at_a_time(home: Path, tiny_model: Path,
                                                                                 tmp_path: Path) -> None:
    """Two versions of one base whose chat templates each added their own tokens (ChatML's two, Phi-3's four):
    one loaded model cannot hold both sets of rows, so asking them side by side says so and how, instead of
    a state_dict error that blamed the base model; each answers alone."""
    from tests.test_chat_formats import base_without_template

    base = base_without_template(tiny_model, tmp_path / "base", chatml_tokens=False)
    (home / "overnight.toml").write_text(f'base_model = "{base}"\n')
    talk = "".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"},
                                            {"role": "assistant", "content": str(i)}]}) + "\n" for i in range(12))
    for name, template in (("cm", "chatml"), ("ph", "phi3")):
        (home / "inbox" / f"{name}.toml").write_text(f'chat_template = "{template}"\nmax_steps = 2\nbatch_size = 4\n'
                                                     f'probe_count = 0\neval_fraction = 0\nmax_length = 64\n')
        (home / "inbox" / f"{name}.jsonl").write_text(talk)
    # and one trained on raw prompts (the base has no template): it added no tokens
    (home / "inbox" / "raw.toml").write_text("max_steps = 2\nbatch_size = 4\nprobe_count = 0\neval_fraction = 0\n")
    (home / "inbox" / "raw.jsonl").write_text("".join(json.dumps({"prompt": f"say {i}", "completion": str(i)}) + "\n"
                                                      for i in range(12)))
    assert overnight("daemon", "--once", "--settle", "0.2", "--quiet", home=home, timeout=600).returncode == 0
    both = overnight("ask", "cm", "ph", "say 3", "--max-new-tokens", "2", home=home, timeout=300)
    assert both.returncode == 1 and "added different tokens" in both.stderr and "Fix: ask them one at a time" in \
        both.stderr, both.stderr
    alone = overnight("ask", "ph", "say 3", "--max-new-tokens", "2", home=home, timeout=300)
    assert alone.returncode == 0, alone.stderr
    # a conversation in a prompts file, asked of the version trained on raw prompts: the file and line say which
    (tmp_path / "p.jsonl").write_text('{"prompt": "say 1"}\n{"messages": [{"role": "user", "content": "say 2"}]}\n')
    res = overnight("compare", "--answers", "raw", "--prompts", str(tmp_path / "p.jsonl"), home=home, timeout=300)
    assert res.returncode == 1 and f"{tmp_path / 'p.jsonl'}, line 2, field 'messages': a conversation, and raw:1 was " \
        "trained on raw prompts" in res.stderr and "Fix: give it one-line prompts" in res.stderr, res.stderr
    # beside a version that added none, in either order (peft loads the plain adapter first)
    for pair in (("ph", "raw"), ("raw", "ph")):
        res = overnight("ask", *pair, "say 3", "--max-new-tokens", "2", "--json", home=home, timeout=300)
        assert res.returncode == 0, res.stderr
        assert [a["model"] for a in json.loads(res.stdout)["answers"]] == [f"{n}:1" for n in pair]
    # the base model through Phi-3's template lacks its four tokens: they start where training started them, so
    # the base answers the same each time, in chat as in ask
    chats = [overnight("chat", "ph", "--base", "--max-new-tokens", "12", home=home, timeout=300,
                       input="say 3\n").stdout.split("base> ", 1)[1].split("\nyou>", 1)[0] for _ in range(2)]
    asked = json.loads(overnight("ask", "ph", "--base", "say 3", "--max-new-tokens", "12", "--json", home=home,
                                 timeout=300, check=True).stdout)
    assert chats[0] == chats[1] == next(a["answer"] for a in asked["answers"] if a["model"] == "base"), (chats, asked)
