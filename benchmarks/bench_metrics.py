"""Scoring speed: NLG scores, CE F1 and bootstrap CIs on 3,000 real IU report pairs.

References are IU X-ray FINDINGS sections (from the torchxrayvision wheel); hypotheses are the same
reports in a seeded random permutation, so every pair is a realistic but wrong report (scores are
low and that is expected: the point is speed). Run ``python benchmarks/bench_metrics.py`` or
``make bench``; prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

N_PAIRS = 3000
N_BERTSCORE_PAIRS = 256
SEED = 0


def load_findings() -> tuple[list[str], str]:
    """Non-empty IU findings, sorted by uid, and where they came from."""
    from course_utils.data import load_iu_reports

    texts = load_iu_reports()["findings"].tolist()
    return [t for t in texts if t.strip()], "course_utils.data.load_iu_reports"


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench_metrics() -> dict:
    """Reports per second for NLG scores and CE F1 on 3,000 pairs, and bootstrap timings."""
    import warnings

    from course_utils import metrics

    findings, source = load_findings()
    if len(findings) < N_PAIRS:
        raise RuntimeError(f"only {len(findings)} non-empty IU findings; need {N_PAIRS}")
    refs = findings[:N_PAIRS]
    perm = np.random.default_rng(SEED).permutation(N_PAIRS)
    hyps = [refs[i] for i in perm]
    result: dict = {"n_pairs": N_PAIRS, "source": source, "hypotheses": "seeded permutation"}

    gts, res = metrics.prepare_pairs(refs, hyps)
    _, t_pycoco = _timed(metrics._pycoco, gts, res)
    _, t_rouge = _timed(metrics._rouge_score_each, gts, res)
    scores, t_nlg = _timed(metrics.nlg_scores, refs, hyps)
    result["nlg_scores"] = {k: round(v, 4) for k, v in scores.items()}
    result["nlg_seconds"] = round(t_nlg, 3)
    result["nlg_reports_per_s"] = round(N_PAIRS / t_nlg, 1)
    result["pycocoevalcap_reports_per_s"] = round(N_PAIRS / t_pycoco, 1)
    result["rouge_score_reports_per_s"] = round(N_PAIRS / t_rouge, 1)

    # warm-up: the first large allocation in a process costs ~0.15 s of page faults
    metrics.bootstrap_ci(np.zeros((N_PAIRS, 2)), n_resamples=1000)
    try:
        ce, t_ce = _timed(metrics.clinical_efficacy, refs, hyps)
        result["ce_seconds"] = round(t_ce, 3)
        result["ce_reports_per_s"] = round(N_PAIRS / t_ce, 1)  # pairs/s: 2 labelings per pair
        result["ce_scores"] = {k: round(v, 4) for k, v in ce.scores.items()}
        cis, t_boot = _timed(metrics.ce_f1_bootstrap, ce, n_resamples=1000, seed=SEED)
        result["ce_bootstrap_1000x3000x14_seconds"] = round(t_boot, 4)
        micro = cis["ce_micro_f1_14"]
        result["ce_micro_f1_14_ci"] = [round(micro.low, 4), round(micro.high, 4)]
    except ImportError as err:  # labels module not there yet
        result["ce_error"] = f"course_utils.labels unavailable: {err}"

    per = metrics.nlg_scores_per_report(refs, hyps)
    _, t_mean = _timed(metrics.bootstrap_ci, per["ROUGE_L"].to_numpy(), n_resamples=1000)
    result["mean_bootstrap_1000x3000_seconds"] = round(t_mean, 4)
    counts = metrics.bleu_counts(refs, hyps)
    _, t_bleu = _timed(metrics.bleu_bootstrap, counts, n_resamples=1000)
    result["bleu_bootstrap_1000x3000_seconds"] = round(t_bleu, 4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics.bertscore(refs[:8], hyps[:8], backend="minilm-offline", device="cpu")  # load model
        bs, t_bs = _timed(
            metrics.bertscore,
            refs[:N_BERTSCORE_PAIRS],
            hyps[:N_BERTSCORE_PAIRS],
            backend="minilm-offline",
            device="cpu",
        )
    result["bertscore_minilm_pairs_per_s"] = round(N_BERTSCORE_PAIRS / t_bs, 1)
    result["bertscore_minilm_F"] = round(bs["F"], 4)

    result["targets"] = {
        "ce_bootstrap_1000x3000x14_seconds": "< 1.0",
        "mean_bootstrap_1000x3000_seconds": "< 1.0",
    }
    return result


if __name__ == "__main__":
    print(json.dumps(bench_metrics(), indent=2))
    sys.exit(0)
