"""The lm-evaluation-harness backend `megatron_de` (megatron/evaluation) against independent
computations with our own model, inside lm-eval's own venv (lm_eval_env.py).

A 2-layer GPT (seq-length 16) trained 3 steps on a GPT-2-tokenized corpus is scored through
the backend (tests/oracle/lm_eval_worker.py, one subprocess per configuration); the expected
numbers come from this interpreter: log-softmax sums of the model's logits, heldout.score_stream
and tools/generate.py --greedy. The last tests install the package into throwaway venvs and run
the `lm_eval` command line on the shipped local tasks.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from megatron.tokenizer import build_stored_tokenizer
from megatron.training.checkpoint_convert import load_merged
from megatron.training.heldout import score_stream
from megatron.training.serial_model import build_serial_model
from tests.integration.test_pretrain_gpt import TINY, run
from tests.oracle.lm_eval_env import OracleUnavailable, build_seconds, ensure_lm_eval_python
from tests.oracle.venvs import run as venv_run
from tests.tools.test_evaluate import GPT2, TEXTS, _without
from tools import generate as generate_tool
from tools.preprocess_data import main as preprocess_main

pytestmark = [pytest.mark.oracle, pytest.mark.slow]

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = pathlib.Path(__file__).with_name("lm_eval_worker.py")
TASKS = REPO / "megatron" / "evaluation" / "tasks"
SEQ = 16  # TINY's --seq-length: the backend's default max_length
PAIRS = [
    ("It is a truth universally acknowledged, that a single", " man"),
    ("Emma Woodhouse, handsome, clever, and", " rich, with a comfortable home"),
    ("", "Sir Walter Elliot"),
    ("The family of Dashwood had long been settled in Sussex. Their estate was", " large."),
]


@pytest.fixture(scope="module")
def lm_python():
    try:
        python = ensure_lm_eval_python()
    except OracleUnavailable as e:
        pytest.skip(f"lm-eval venv unavailable: {e}")
    print(f"lm-eval venv: {python} (built in {build_seconds()} s)")
    return python


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoint folder, its serial model and its tokenizer."""
    root = tmp_path_factory.mktemp("lm_eval")
    jsonl = root / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    assert preprocess_main(["--input", str(jsonl), "--output-prefix", str(root / "docs"), *GPT2,
                            "--append-eod", "--workers", "1"]) == 0  # fmt: skip
    base = _without(TINY, "--mock-data", "--tokenizer-type", "--vocab-size")
    run(base + GPT2 + ["--data-path", str(root / "docs_text_document"), "--split", "100,0,0",
                       "--train-iters", "3", "--save", str(root / "ckpt")])  # fmt: skip
    merged = load_merged(str(root / "ckpt"))
    tokenizer = build_stored_tokenizer(merged.args["tokenizer"])
    return root / "ckpt", build_serial_model(merged, tokenizer.vocab_size), tokenizer


def _backend(python, workdir, job, tag):
    """Results of the job run by lm_eval_worker.py in the lm-eval venv."""
    job_file, out_file = workdir / f"job_{tag}.json", workdir / f"out_{tag}.json"
    job_file.write_text(json.dumps(job))
    r = venv_run([python, WORKER, job_file, out_file], timeout=600, env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, f"worker failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    return json.loads(out_file.read_text())


@torch.no_grad()
def _logprob(model, ids, n_cont):
    """(sum of log P of the last n_cont ids given the ones before, all of them greedy)."""
    x = torch.tensor([ids[:-1]])
    logits = model(x, torch.arange(x.shape[1])[None])[0, -n_cont:].double()  # [n_cont, v]
    target = torch.tensor(ids[-n_cont:])
    logp = torch.log_softmax(logits, -1).gather(-1, target[:, None]).sum()
    return float(logp), bool((logits.argmax(-1) == target).all())


def _expected_pair(model, tok, context, continuation):
    ctx = tok.tokenize(context) if context else [tok.eod]
    cont = tok.tokenize(continuation)
    if context:  # the pairs are chosen so that the joint tokens split where the context's end
        assert tok.tokenize(context + continuation) == ctx + cont
    return _logprob(model, (ctx + cont)[-(SEQ + 1) :], len(cont))


def _greedy_pair(model, tok, context):
    """(context, the model's greedy next token as text): is_greedy must be True for it."""
    ids = tok.tokenize(context)
    with torch.no_grad():
        nxt = int(model(torch.tensor([ids]), torch.arange(len(ids))[None])[0, -1].argmax())
    return context, tok.detokenize([nxt])


def _exact_tokens(tok, text, n):
    """A prefix of `text` that tokenizes to exactly n tokens."""
    ids = tok.tokenize(text)
    for k in range(n, len(ids)):
        prefix = tok.detokenize(ids[:k])
        if len(tok.tokenize(prefix)) == n:
            return prefix
    raise AssertionError(f"no prefix of {n} tokens")


def _rolling_expected(model, tok, text):
    """log P(text) in lm_eval's rolling windows, computed here: the first window predicts the
    first SEQ tokens after end-of-document, each later one up to SEQ tokens with SEQ before."""
    stream = [tok.eod] + tok.tokenize(text)
    total, p = 0.0, 0  # p: tokens of text predicted so far (stream positions 1..p)
    while p < len(stream) - 1:
        e = min(p + SEQ, len(stream) - 1)
        total += _logprob(model, stream[max(0, e - SEQ) : e + 1], e - p)[0]
        p = e
    return total


def _ppl_texts(tok):
    paragraphs = [json.loads(x)["text"] for x in open(TASKS / "austen_ppl.jsonl")]
    return [_exact_tokens(tok, paragraphs[0], 3 * SEQ), TEXTS[3], paragraphs[1]]


def test_loglikelihood_is_the_models_log_softmax_sum(lm_python, trained, tmp_path):
    ckpt, model, tok = trained
    pairs = PAIRS + [_greedy_pair(model, tok, "It is a truth universally")]
    job = {"model_args": {"load": str(ckpt), "device": "cpu"}, "loglikelihood": pairs}
    got = _backend(lm_python, tmp_path, job, "ll")["loglikelihood"]
    for (context, continuation), (logp, greedy) in zip(pairs, got):
        want_logp, want_greedy = _expected_pair(model, tok, context, continuation)
        assert logp == pytest.approx(want_logp, abs=1e-5), (context, continuation)
        assert greedy == want_greedy, (context, continuation)
    assert got[-1][1] is True and all(logp < 0 for logp, _ in got)


def test_rolling_is_score_stream_and_lm_evals_windows(lm_python, trained, tmp_path):
    ckpt, model, tok = trained
    texts = _ppl_texts(tok)
    got = _backend(lm_python, tmp_path, {"model_args": {"load": str(ckpt), "device": "cpu"},
                                         "loglikelihood_rolling": texts}, "roll")  # fmt: skip
    got = got["loglikelihood_rolling"]
    for text, logp in zip(texts[:2], got):  # whole windows only: score_stream's windows agree
        stream = np.array([tok.eod] + tok.tokenize(text))
        assert len(stream) - 1 <= SEQ or (len(stream) - 1) % SEQ == 0
        assert logp == pytest.approx(-score_stream(model, stream, SEQ).nats, abs=1e-4)
    assert len(tok.tokenize(texts[2])) % SEQ != 0  # a ragged last window: full context
    assert got[2] == pytest.approx(_rolling_expected(model, tok, texts[2]), abs=1e-4)


def _all_requests(ckpt, tok, batch_size):
    gen = [
        ("It is a truth universally acknowledged", {"until": ["\n\n"], "max_gen_toks": 20}),
        ("Emma", {"max_gen_toks": 3}),
        ("", {"until": [" the"], "max_gen_toks": 8}),
    ]
    return {"model_args": {"load": str(ckpt), "device": "cpu", "batch_size": batch_size},
            "loglikelihood": PAIRS, "loglikelihood_rolling": _ppl_texts(tok),
            "generate_until": gen}  # fmt: skip


def test_batch_size_does_not_change_results(lm_python, trained, tmp_path):
    ckpt, _, tok = trained
    one = _backend(lm_python, tmp_path, _all_requests(ckpt, tok, 1), "b1")
    four = _backend(lm_python, tmp_path, _all_requests(ckpt, tok, 4), "b4")
    for (a, ga), (b, gb) in zip(one["loglikelihood"], four["loglikelihood"]):
        assert a == pytest.approx(b, abs=1e-5) and ga == gb
    assert four["loglikelihood_rolling"] == pytest.approx(one["loglikelihood_rolling"], abs=1e-5)
    assert four["generate_until"] == one["generate_until"]


def _generate_tool(capsys, ckpt, prompt, max_new):
    capsys.readouterr()
    assert generate_tool.main(["--load", str(ckpt), "--prompt", prompt, "--greedy",
                               "--max-new-tokens", str(max_new)]) == 0  # fmt: skip
    text = capsys.readouterr().out.split("--- sample 1 ---\n", 1)[1][: -len("\n\n")]
    assert text.startswith(prompt)
    return text[len(prompt) :].split("<|endoftext|>")[0]  # the backend stops at end-of-document


def test_generate_until_is_generate_py_greedy_cut_at_the_stop_string(
    lm_python, trained, tmp_path, capsys
):
    ckpt, _, _ = trained
    prompt = "It is a truth universally acknowledged"  # 7 tokens + 14: the window slides
    full, short = _generate_tool(capsys, ckpt, prompt, 14), _generate_tool(capsys, ckpt, prompt, 4)
    assert len(full) >= 4, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    gen = [(prompt, {"until": [stop], "max_gen_toks": 14}),
           (prompt, {"until": ["\x00never"], "max_gen_toks": 14}),
           (prompt, {"max_gen_toks": 4})]  # fmt: skip
    job = {"model_args": {"load": str(ckpt), "device": "cpu", "batch_size": 2},
           "generate_until": gen}  # fmt: skip
    got = _backend(lm_python, tmp_path, job, "gen")["generate_until"]
    assert got == [full[: full.find(stop)], full, short]


def _child_venv(lm_python, path):
    """A fresh venv that sees the lm-eval venv's packages (a .pth adds its site-packages)."""
    r = venv_run([sys.executable, "-m", "venv", path], timeout=300)
    assert r.returncode == 0, r.stderr
    base = subprocess.run([lm_python, "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    site = next((path / "lib").glob("python3*/site-packages"))
    (site / "_lm_eval_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    return path / "bin" / "python", site


def _pip_install(python, *args):
    # No native build: an editable install uses the checkout's in-place extensions, and a
    # wheel's package runs on the pure-Python reference paths.
    r = venv_run([python, "-m", "pip", "install", "--quiet", "--no-deps", *args], timeout=600,
                 env={"MEGATRON_SKIP_NATIVE": "1"})  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot pip install the package here: {r.stderr.strip()[-500:]}")


def test_editable_install_makes_the_lm_eval_cli_find_megatron_de(lm_python, trained, tmp_path):
    ckpt, _, _ = trained
    python, site = _child_venv(lm_python, tmp_path / "venv")
    _pip_install(python, "-e", REPO)
    assert (site / "megatron_de_lm_eval.pth").is_file()
    startup = "import sys; print(sorted(m for m in sys.modules if 'megatron' in m))"
    r = venv_run([python, "-c", startup], timeout=120)
    assert "'megatron'" not in r.stdout and "megatron_de_lm_eval_hook" in r.stdout, r.stdout
    out = tmp_path / "results"
    cmd = [python, "-m", "lm_eval", "--model", "megatron_de", "--model_args", f"load={ckpt}",
           "--tasks", "lambada_austen,austen_ppl", "--include_path", TASKS, "--device", "cpu",
           "--batch_size", "4", "--output_path", out]  # fmt: skip
    r = venv_run(cmd, timeout=600, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert {"acc,none", "perplexity,none"} <= set(results["lambada_austen"])
    ppl_keys = {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"}
    assert ppl_keys <= set(results["austen_ppl"])
    assert 0.0 <= results["lambada_austen"]["acc,none"] <= 1.0
    assert results["austen_ppl"]["bits_per_byte,none"] > 0


def test_wheel_carries_the_startup_hook_and_the_tasks(lm_python, tmp_path):
    python, site = _child_venv(lm_python, tmp_path / "venv")
    r = venv_run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path, REPO],
                 timeout=600, env={"MEGATRON_SKIP_NATIVE": "1"})  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {r.stderr.strip()[-500:]}")
    wheel = next(tmp_path.glob("megatron_de-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"megatron_de_lm_eval.pth", "megatron_de_lm_eval_hook.py",
            "megatron/evaluation/tasks/lambada_austen.yaml",
            "megatron/evaluation/tasks/austen_ppl.jsonl"} <= names  # fmt: skip
    _pip_install(python, wheel)
    check = "from lm_eval.api.registry import get_model; print(get_model('megatron_de').__name__)"
    r = venv_run([python, "-c", check], timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "MegatronDELM", r.stderr[-3000:]


def _cli_scores(lm_python, tmp_path, model, model_args, tag):
    """results[task] of `lm_eval` (the lm_eval_cli module, which registers megatron_de)."""
    out = tmp_path / f"out_{tag}"
    cmd = [lm_python, "-m", "megatron.evaluation.lm_eval_cli", "--model", model,
           "--model_args", model_args, "--tasks", "lambada_austen,austen_ppl",
           "--include_path", TASKS, "--limit", "12", "--device", "cpu", "--batch_size", "4",
           "--output_path", out]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = venv_run(cmd, timeout=600, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return json.loads(next(out.rglob("results_*.json")).read_text())["results"]


def test_lm_eval_hf_on_the_exported_folder_gives_equal_scores(lm_python, trained, tmp_path):
    """The same checkpoint scored by `--model megatron_de` and, exported to transformers, by
    lm_eval's own `--model hf`: every metric of both local tasks agrees."""
    from tools import checkpoint_to_hf

    ckpt, _, _ = trained
    hf_dir = tmp_path / "hf_model"
    assert checkpoint_to_hf.main(["--load", str(ckpt), "--save-dir", str(hf_dir)]) == 0
    ours = _cli_scores(lm_python, tmp_path, "megatron_de", f"load={ckpt}", "ours")
    hf = _cli_scores(lm_python, tmp_path, "hf", f"pretrained={hf_dir},dtype=float32", "hf")
    for task in ("lambada_austen", "austen_ppl"):
        metrics = {k for k, v in ours[task].items() if isinstance(v, float) and "stderr" not in k}
        assert metrics, ours[task]
        for k in sorted(metrics):
            assert hf[task][k] == pytest.approx(ours[task][k], rel=1e-4), (task, k)


def test_cli_module_registers_megatron_de_without_an_install(lm_python, trained, tmp_path):
    ckpt, _, _ = trained
    cmd = [lm_python, "-m", "megatron.evaluation.lm_eval_cli", "--model", "megatron_de",
           "--model_args", f"load={ckpt}", "--tasks", "lambada_austen", "--include_path", TASKS,
           "--limit", "4", "--device", "cpu", "--output_path", tmp_path / "out"]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = venv_run(cmd, timeout=600, env=env)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert "acc,none" in results["results"]["lambada_austen"]
