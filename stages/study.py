"""DVC stage `study`: technique studies (MeCo, curriculum + averaging, G_stack) against plain pretraining."""

import logging

from fluxforge import paths as P
from fluxforge.config import Params
from fluxforge.data.tokenize import load_pretrained_tokenizer
from fluxforge.eval.heldout import HeldOut
from fluxforge.io import atomic_file, write_json
from fluxforge.runtime import set_threads, stage
from fluxforge.track.runs import stage_run
from fluxforge.train.study import compare, run_variant, variants

log = logging.getLogger("fluxforge.stage.study")


@stage
def main(params: Params) -> None:
    set_threads()
    tok, heldout, e = load_pretrained_tokenizer(P.TOKENS), HeldOut(P.WORLD / "eval"), params.evaluate

    def measure(model, slices):  # noqa: ANN001, ANN202 - the slices every variant trained on
        return heldout.measure(model, tok, slices, e.seq_len, e.batch_size)

    plan = variants(params)
    with stage_run("study", params, params.study.model_dump(), inputs={"tokens": P.TOKENS}) as run:
        results = {name: run_variant(params, name, cfg, layers, tok, measure) for name, (cfg, layers) in plan.items()}
        write_json(P.METRICS / "study.json", out := compare(results, params.study.steps))
        with atomic_file(P.PLOTS / "study" / "curves.csv") as fh:
            fh.write("variant,tokens,loss\n")
            for name, r in results.items():
                fh.writelines(f"{name},{c['tokens']},{c['loss']}\n" for c in r["curve"])
        run.metrics({f"{k}_{m}": v[m] for k, v in results.items() for m in ("heldout_loss", "acc", "train_flops")})
    for name, c in out["vs_baseline"].items():
        log.info("study %s vs baseline: held-out loss %+.4f, accuracy %+.3f, compute x%.2f", name,
                 c["heldout_loss_change"], c["acc_change"], c["compute_ratio"])


if __name__ == "__main__":
    main()
