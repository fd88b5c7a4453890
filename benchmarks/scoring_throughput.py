"""Multiple-choice scoring speed: our ``score_mcq`` against lm-evaluation-harness on the same questions.

Usage (from the repo root, inside .venv):  python benchmarks/scoring_throughput.py [--batch-size 64] [--threads N] [--repeats 5]
Writes the "MCQ scoring throughput" section of BENCHMARKS.md with the machine, the date and the command.

Why: the evaluate stage scores every model on every question, and the parity test
(tests/test_lmeval_parity.py) shows our scores equal lm-eval's; this shows what that costs.
The model is the default ``ModelConfig`` (a Llama of the size the pipeline evaluates on CPU) with
random weights and a Llama-style tokenizer trained on the default world at the default vocabulary
size (``<s>`` = 0 is BOS and added by the post-processor, ``</s>`` = 1 is EOS: the case where
lm-eval's prefix rule matters), and the default world's questions. lm-eval runs with its default
model arguments, ours with its defaults (the same). Both sides get the same batch size and torch thread count; model
loading is outside every timed region (ours: ``load_model`` once; lm-eval: one ``HFLM`` object
reused), and one untimed warm-up run of each fills lm-eval's dataset cache and torch's kernels.
Timed per repeat:

* ours: ``score_mcq`` on the questions (tokenising, forward passes, acc and acc_norm choices);
* lm-eval end to end: ``simple_evaluate`` on a local task over the same questions (task build
  from YAML, dataset load from its cache, requests, tokenising, forward passes, metrics);
* lm-eval model only: ``HFLM.loglikelihood`` on that task's requests, built beforehand (its
  tokenising and forward passes: the part that does the same work as ours).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from report_md import machine, replace_section  # noqa: E402

from fluxforge.config import ModelConfig, TokenizerConfig, WorldConfig  # noqa: E402
from fluxforge.eval.lm_eval_task import write_lm_eval_task  # noqa: E402
from fluxforge.eval.scoring import mcq_predictions, score_mcq  # noqa: E402
from fluxforge.train.model import build_model, count_params, load_model, save_model  # noqa: E402
from fluxforge.world.generate import WorldBuilder  # noqa: E402

TASK = "fluxforge_mcq_bench"


def llama_style_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose post-processor puts BOS ``<s>`` (0) first; EOS is ``</s>`` (1), as in Llama 3's tokenizer.json."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=alphabet, show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64, help="requests per forward pass for both (evaluate uses 2 x evaluate.batch_size = 64)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for both (default: all cores)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each; the median is reported")
    ap.add_argument("--questions", type=int, default=0, help="use only the first N questions (0: all of the default world's)")
    ap.add_argument("--no-write", action="store_true", help="print the section but leave BENCHMARKS.md alone")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    world = WorldBuilder(WorldConfig())
    world.build_facts()
    world.build_docs()
    questions = world.build_mcq()
    questions = questions[: args.questions] if args.questions else questions
    tok = llama_style_tokenizer([d.text for d in world.docs], TokenizerConfig().vocab_size)
    cfg = ModelConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(build_model(cfg, len(tok), tok.eos_token_id, tok.pad_token_id), tok, tmp / "model", {})
        model, tok = load_model(tmp / "model")
        model.eval()
        n_params = count_params(model)
        lm = HFLM(pretrained=str(tmp / "model"), device="cpu", batch_size=args.batch_size)  # default model arguments
        manager = TaskManager(include_path=str(write_lm_eval_task(questions, tmp / "task", TASK)), include_defaults=False)

        def ours() -> list[dict]:
            return score_mcq(model, tok, questions, batch_size=args.batch_size)

        def theirs() -> dict:
            return lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=False,
                                           bootstrap_iters=0, verbosity="ERROR")

        task = get_task_dict([TASK], manager)[TASK]
        task.build_all_requests(rank=0, world_size=1)
        requests = [inst for inst in task.instances]

        def theirs_model_only() -> None:
            lm.loglikelihood(requests, disable_tqdm=True)

        # warm-up, and a parity check at this size: lm-eval's per-option log-likelihoods and choices against ours
        warm = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
        their_ll = {s["doc"]["id"]: [r[0] for r in s["filtered_resps"]] for s in warm["samples"][TASK]}
        mine = ours()
        max_diff = max(float(np.abs(np.array(their_ll[r["id"]]) - r["loglik"]).max()) for r in mine)
        differ = sum(mcq_predictions(their_ll[q["id"]], q["options"]) != (r["pred"], r["pred_norm"]) for q, r in zip(questions, mine))
        acc_ours, acc_theirs = float(np.mean([r["correct"] for r in mine])), warm["results"][TASK]["acc,none"]
        theirs_model_only()
        times: dict[str, list[float]] = {"ours": [], "theirs": [], "model": []}
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all three alike
            for name, fn in (("ours", ours), ("theirs", theirs), ("model", theirs_model_only)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    n, n_req = len(questions), len(requests)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    qps = {name: n / t for name, t in med.items()}
    runs = {name: ", ".join(f"{t:.2f}" for t in ts) for name, ts in times.items()}
    ratio = {name: statistics.median(t / o for t, o in zip(times[name], times["ours"], strict=True)) for name in ("theirs", "model")}
    cmd = "python benchmarks/scoring_throughput.py" + (f" --batch-size {args.batch_size}" if args.batch_size != 64 else "") + (
        f" --threads {args.threads}" if args.threads != (os.cpu_count() or 1) else "") + (
        f" --questions {args.questions}" if args.questions else "") + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    one_thread_note = (" (this machine is shared: with every core, torch's threads wait on each other whenever another process"
                       " holds one, and runs swing severalfold)") if args.threads == 1 and (os.cpu_count() or 1) > 1 else ""
    body = f"""Machine: {machine()}. Date: {dt.date.today()}. Command: `.venv/bin/{cmd}` (or the same options after `.venv/bin/python benchmarks/run.py scoring_throughput`).

{n} four-option questions of the default world ({n_req} log-likelihood requests); the default model size
({cfg.num_layers} layers, hidden {cfg.hidden_size}, {n_params / 1e6:.2f} M parameters, random weights) with a Llama-style tokenizer
(vocabulary {len(tok)}; BOS `<s>` added by its post-processor, EOS `</s>`);
batch size {args.batch_size} and {args.threads} torch thread(s) for both{one_thread_note}; lm-eval {lm_eval.__version__} (`HFLM`, default model arguments, device cpu).
Model loading is outside the timed regions; one untimed warm-up run of each comes first; then {args.repeats} rounds,
each timing the three in turn (so load from other processes hits all alike); the median is reported.
Same answers: max |lm-eval - ours| over the {n_req} option log-likelihoods = {max_diff:.1e} nats; the acc or acc_norm choice differs
on {differ} of {n} questions; acc ours {acc_ours:.3f}, lm-eval {acc_theirs:.3f} (random weights, so near chance).

| what is timed | median s | runs (s) | questions/s |
|---|---|---|---|
| ours: `score_mcq` (tokenise, forward passes, acc/acc_norm choices) | {med['ours']:.2f} | {runs['ours']} | {qps['ours']:.0f} |
| lm-eval: `simple_evaluate` (task from YAML, dataset from its cache, requests, tokenise, forward passes, metrics) | {med['theirs']:.2f} | {runs['theirs']} | {qps['theirs']:.0f} |
| lm-eval: `HFLM.loglikelihood` on the task's requests built beforehand (tokenise, forward passes) | {med['model']:.2f} | {runs['model']} | {qps['model']:.0f} |

Ours is {ratio['theirs']:.1f}x as fast as `simple_evaluate` and {ratio['model']:.1f}x as fast as lm-eval's model side alone
(median of the per-round ratios). Ours scores each question's context once and reuses its key/value cache for the
four options, and tokenises in batched calls; lm-eval runs the whole context once per option.
"""
    if not args.no_write:
        replace_section(ROOT / "BENCHMARKS.md", "MCQ scoring throughput", body)
    print(body)
    print(f"(python {platform.python_version()}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
