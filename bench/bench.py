#!/usr/bin/env python3
"""dialsum against the old baseline's recipe, side by side: training, inference, metric, overhead, memory.

    make bench                      # the full benchmark (30-60 min on 2 CPU cores; inference dominates)
    make bench ARGS=--quick         # a smoke check of this script: few repetitions, few rows, tiny demo run
    .venv/bin/python bench/bench.py --help

How each figure is measured: bench/README.md. Results: bench/results.json and bench/RESULTS.md.
Needs ../shared/data/ko/ (dev.csv, test.csv) and ../shared/bench/seed_baseline.py; exits 0 with the
reason printed when either is absent.
"""
import argparse, hashlib, json, os, platform, statistics, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared"
PY = sys.executable
CPU_SPEC = dict(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, attention_heads=4, ffn_dim=1024,
                max_position_embeddings=512, dropout=0.1)
# KoBART (gogamza/kobart-base-v2): 30k vocabulary, d_model 768, 6+6 layers, 16 heads, FFN 3072, about 124 M parameters.
KOBART_SPEC = dict(vocab_size=30000, d_model=768, encoder_layers=6, decoder_layers=6, attention_heads=16, ffn_dim=3072,
                   max_position_embeddings=1026, dropout=0.1)


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- the benchmark model
def ko_texts(data):
    "The texts the benchmark tokenizer is trained on: cleaned dev dialogues and summaries, and test dialogues."
    from dialsum.data import clean_split, model_inputs, read_split
    dev, _ = clean_split(read_split(data / "dev.csv", "dev"))
    test, _ = clean_split(read_split(data / "test.csv", "test"))
    return model_inputs(dev) + list(dev["summary"]) + model_inputs(test)


def bench_model(spec_d, texts, out_dir):
    "Build the benchmark model with dialsum.models.build_scratch_model, or reuse the folder when it matches."
    from dialsum.config import ScratchModel
    from dialsum.models import SCRATCH_MARKER, build_scratch_model
    spec = ScratchModel(**spec_d)
    sha = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    marker = out_dir / SCRATCH_MARKER
    if marker.is_file() and (out_dir / "model.safetensors").is_file():
        rec = json.loads(marker.read_text(encoding="utf-8"))
        if rec.get("spec") == spec.model_dump(mode="json") and rec.get("texts_sha256") == sha:
            log(f"reusing the benchmark model {out_dir.relative_to(ROOT)}")
            return out_dir
    log(f"building the benchmark model {out_dir.relative_to(ROOT)} ({spec_d})")
    t = time.perf_counter()
    build_scratch_model(texts, spec, out_dir, seed=0)
    log(f"  built in {time.perf_counter() - t:.1f} s")
    return out_dir


def bf16_copy(model_dir):
    "A bfloat16 copy of a model folder (the seed loads it in bfloat16; dialsum's loader reads it as float32)."
    import shutil, torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    out = model_dir.with_name(model_dir.name + "-bf16")
    src_marker = (model_dir / "dialsum_scratch.json").read_text(encoding="utf-8")
    if (out / "model.safetensors").is_file() and (out / "dialsum_scratch.json").is_file() \
            and (out / "dialsum_scratch.json").read_text(encoding="utf-8") == src_marker:
        return out
    shutil.rmtree(out, ignore_errors=True)
    AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    (out / "dialsum_scratch.json").write_text(src_marker, encoding="utf-8")
    return out


def describe_model(model_dir):
    "Sizes and parameter count (dialsum.models.param_counts, tied weights once) of the benchmark model."
    from dialsum.models import load_pretrained, param_counts
    _, m = load_pretrained(rel(model_dir))
    c = m.config
    return dict(path=str(model_dir.relative_to(ROOT)), vocab_size=c.vocab_size, d_model=c.d_model,
                encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers, ffn_dim=c.encoder_ffn_dim,
                max_position_embeddings=c.max_position_embeddings, parameters=param_counts(m)["total"])


# ---------------------------------------------------------------- child processes
def run_child(cmd, out_json=None, env=None):
    """Run `cmd`; return (result JSON or None, wall seconds, peak RSS MiB, tail of its output).
    The peak RSS is ru_maxrss from wait4: the largest of the process and the children it waited for."""
    logf = BENCH / "work" / "child.log"
    t = time.perf_counter()
    with open(logf, "w", encoding="utf-8") as lf:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except KeyboardInterrupt:
            p.kill(); raise
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    tail = logf.read_text(encoding="utf-8", errors="replace")[-3000:]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed with exit code {p.returncode}:\n{tail}")
    res = json.loads(Path(out_json).read_text(encoding="utf-8")) if out_json else None
    if res is not None: res["process_cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 2)  # the whole process
    return res, wall, ru.ru_maxrss / 1024, tail  # ru_maxrss is in KiB on Linux


def seed_cmd(a, args):
    "The seed recipe, run as it is: a plain subprocess on CPU; on CUDA through bench/seed_cuda.py (default device set)."
    if a.threads: args = [*args, "--threads", str(a.threads)]
    if a.device == "cpu":
        return [PY, rel(a.seed_script), *args]
    return [PY, str(BENCH / "seed_cuda.py"), "--seed-script", rel(a.seed_script), "--", *args]


def peer_cmd(a, args, grouped=False):
    "The field's recipe (../shared/bench/hf_peer.py: Seq2SeqTrainer, per-batch padding, predict_with_generate), as it is."
    if a.threads: args = [*args, "--threads", str(a.threads)]
    return [PY, rel(a.peer_script), *args, *(["--group-by-length"] if grouped else [])]


PEERS = {"hf": "HF recipe, random sampler", "hf_grouped": "HF recipe, group_by_length"}


def sides(a, r, names):
    "The sides of repetition `r`, rotated each repetition so that none always runs first (or last) on a busy machine."
    names = [n for n in names if a.peer_script.is_file() or n not in PEERS]
    k = r % len(names)
    return names[k:] + names[:k]


def worker_cmd(a, what, args):
    threads = ["--threads", str(a.threads)] if a.threads else []
    return [PY, str(BENCH / "worker.py"), what, "--device", a.device, *(["--bf16"] if a.bf16 else []), *threads, *args]


def rel(p):
    "`p` relative to the project folder (the children run there), so records hold no absolute paths."
    return os.path.relpath(p, ROOT)


def med(xs):
    return statistics.median(xs)


# ---------------------------------------------------------------- training
def bench_training(a, model_dir, work):
    log(f"\n== training: {a.train_steps} steps of batch {a.batch} on dev.csv, {a.reps} repetitions, alternating")
    names = ["dialsum", "seed", "hf", "hf_grouped", "dialsum_buckets"] + (["dialsum_tokens"] if a.batch_tokens else [])
    runs = {n: [] for n in sides(a, 0, names)}
    for r in range(a.reps):
        for side in sides(a, r, names):
            out = work / f"train_{side}_{r}.json"
            if side in ("dialsum", "dialsum_tokens", "dialsum_buckets"):
                tokens = ["--batch-tokens", str(a.batch_tokens)] if side == "dialsum_tokens" else []
                if side == "dialsum_buckets": tokens = ["--sampler", "length_buckets"]  # opt-in: faster, judged on learning too
                cmd = worker_cmd(a, "train", ["--model", rel(model_dir), "--data", rel(a.data / "dev.csv"),
                                              "--steps", str(a.train_steps), "--batch", str(a.batch), *tokens,
                                              "--out", rel(out)])
            elif side in PEERS:
                cmd = peer_cmd(a, ["--model", rel(model_dir), "--data", rel(a.data / "dev.csv"), "--train-steps",
                                   str(a.train_steps), "--batch", str(a.batch), "--out", rel(out)],
                               grouped=side == "hf_grouped")
            else:
                cmd = seed_cmd(a, ["--model", rel(model_dir), "--data", rel(a.data / "dev.csv"), "--train-steps",
                                   str(a.train_steps), "--batch", str(a.batch), "--out", rel(out)])
            res, wall, rss, _ = run_child(cmd, out)
            res["process_seconds"], res["peak_rss_mib"] = round(wall, 2), round(rss, 1)
            if side == "seed" or side in PEERS:
                res["train_real_tokens_per_s"] = round(res["train_tokens_real"] / res["train_seconds"], 1)
            runs[side].append(res)
            log(f"  rep {r} {side:15s}: {res['train_samples']} samples in {res['train_seconds']:.2f} s = "
                f"{res['train_samples_per_s']:.2f} samples/s, {res['train_real_tokens_per_s']:.0f} real tok/s, "
                f"padding {100 * res['train_padding_share']:.1f}%, peak RSS {rss:.0f} MiB")
    return runs


def best_fixed_batches(L, T, batch, swaps=200_000, seed=0):
    """Padding share of the best partition into batches of `batch` rows that a local search finds: start from a sort by
    encoder length, swap two rows of two random batches when that lowers the fed tokens. A bound on what any sampler
    with a fixed batch size can reach on this split, not a sampler (it would give the same batches every epoch)."""
    import random
    rng = random.Random(seed)
    order = sorted(range(len(L)), key=lambda i: -L[i])
    bs = [order[s:s + batch] for s in range(0, len(order), batch)]
    cost = lambda b: len(b) * (max(L[i] for i in b) + max(T[i] for i in b))
    fed = sum(cost(b) for b in bs)
    for _ in range(swaps):
        a, c = rng.randrange(len(bs)), rng.randrange(len(bs))
        if a == c: continue
        i, j = rng.randrange(len(bs[a])), rng.randrange(len(bs[c]))
        old = cost(bs[a]) + cost(bs[c])
        bs[a][i], bs[c][j] = bs[c][j], bs[a][i]
        new = cost(bs[a]) + cost(bs[c])
        if new > old: bs[a][i], bs[c][j] = bs[c][j], bs[a][i]
        else: fed += new - old
    return round(1 - sum(L[i] + T[i] for i in range(len(L))) / fed, 4)


def padding_analysis(model_dir, data, batch, seed=42):
    """Padding share of one pass over dev.csv at `batch` under several orders, from the token lengths alone (no training):
    file order (the seed), random, transformers' group_by_length sampler, dialsum's LengthBucketSampler (the default),
    and the best fixed-size batches a local search finds."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices
    sys.path.insert(0, str(BENCH))
    from worker import make_features, split_inputs
    from dialsum.models import load_pretrained
    from dialsum.train import LengthBucketSampler, padding_share, token_batches
    tok, _ = load_pretrained(rel(model_dir))
    srcs, sums = split_inputs(data / "dev.csv", "dev")
    feats = make_features(tok, srcs, sums, 512, 100)
    L, T = [len(f["input_ids"]) for f in feats], [len(f["labels"]) for f in feats]

    def share(idx):
        fed = real = 0
        for s in range(0, len(idx), batch):
            b = idx[s:s + batch]
            fed += len(b) * (max(L[i] for i in b) + max(T[i] for i in b)); real += sum(L[i] + T[i] for i in b)
        return round(1 - real / fed, 4)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(L), generator=g).tolist()
    return dict(rows=len(L), batch=batch, mean_source_tokens=round(sum(L) / len(L), 1), max_source_tokens=max(L),
                mean_label_tokens=round(sum(T) / len(T), 1), file_order_per_batch=share(list(range(len(L)))),
                random=share(perm), group_by_length=share(get_length_grouped_indices(L, batch, generator=g)),
                group_by_length_megabatch_rows=min(len(L) // (batch * 4), 50) * batch,
                length_buckets=share(list(LengthBucketSampler(L, T, batch, seed=seed))),
                best_fixed_batches_found=best_fixed_batches(L, T, batch),
                token_budget={str(n): _token_budget(L, T, n, token_batches, padding_share) for n in (2048, 4096)})


def _token_budget(L, T, n, token_batches, padding_share):
    "training.batch_tokens n (batch_padding 0.03) on these lengths: padding, batches, rows per batch, budget used."
    import numpy as np
    L, T = np.asarray(L), np.asarray(T)
    bs = token_batches(L, T, n, 0.03, seed=42)
    return dict(padding=round(padding_share(bs, L, T), 4), batches=len(bs), rows_per_batch=round(len(L) / len(bs), 1),
                budget_used=round(float((L + T).sum()) / (len(bs) * n), 3))


# ---------------------------------------------------------------- inference
def bench_inference(a, model_dir, work):
    log(f"\n== inference: {a.infer_n} test dialogues, 4 beams, no_repeat_ngram_size 2, up to 100 new tokens, "
        f"{a.reps} repetitions, alternating")
    data = rel(a.data / "test.csv")
    runs = {n: [] for n in sides(a, 0, ["dialsum", "seed", "hf"])}
    for r in range(a.reps):
        for side in sides(a, r, ["dialsum", "seed", "hf"]):
            out = work / f"infer_{side}_{r}.json"
            if side == "dialsum":
                cmd = worker_cmd(a, "infer", ["--model", rel(model_dir), "--data", data, "--n", str(a.infer_n),
                                              "--out", rel(out)])
            elif side == "hf":  # the same settings: 4 beams, no_repeat_ngram_size 2, 100 new tokens, min_new_tokens 1
                cmd = peer_cmd(a, ["--model", rel(model_dir), "--data", rel(a.data / "dev.csv"), "--infer-data", data,
                                   "--infer-n", str(a.infer_n), "--min-new-tokens", "1", "--out", rel(out)])
            else:  # the seed's --max-length is generate's max_length (total length, decoder start included)
                cmd = seed_cmd(a, ["--model", rel(model_dir), "--data", data, "--infer-n", str(a.infer_n),
                                   "--out", rel(out)])
            res, wall, rss, _ = run_child(cmd, out)
            res["process_seconds"], res["peak_rss_mib"] = round(wall, 2), round(rss, 1)
            runs[side].append(res)
            log(f"  rep {r} {side:15s}: {res['infer_examples']} in {res['infer_seconds']:.2f} s = "
                f"{res['infer_examples_per_s']:.2f} examples/s")
    out = work / "infer_plain.json"
    plain, _, _, _ = run_child(worker_cmd(a, "plain", ["--model", rel(model_dir), "--data", data, "--n",
                                                       str(a.infer_n), "--out", rel(out)]), out)
    log(f"  plain masked generate (file order): {plain['infer_seconds']:.2f} s")
    ours = runs["dialsum"][0]["predictions"]
    same = sum(x == y for x, y in zip(ours, plain["predictions"]))
    stable = all(r["predictions"] == ours for r in runs["dialsum"])
    agreement = dict(identical=same, rows=len(ours), share=same / len(ours), dialsum_reps_identical=stable,
                     nonempty=sum(bool(x) for x in ours), first_predictions=ours[:3],
                     plain_seconds=plain["infer_seconds"], generated_tokens=plain["generated_tokens"],
                     examples_differing=[dict(row=i, dialsum=x, plain=y) for i, (x, y) in
                                         enumerate(zip(ours, plain["predictions"])) if x != y][:3])
    log(f"  identical to the plain masked generate: {same}/{len(ours)} ({agreement['nonempty']} non-empty); "
        f"generated tokens per summary {plain['generated_tokens']}")
    for r in runs["dialsum"]: r.pop("predictions")
    return runs, agreement


# ---------------------------------------------------------------- metric
def metric_inputs(data, n):
    """499 predictions x 3 references from dev.csv: the prediction of row i is the first two turns of its dialogue
    (a lead summary); its references are the summaries of rows i, i+1 and i+2 (dev has one reference per row)."""
    from dialsum.data import clean_split, read_split
    dev, _ = clean_split(read_split(data / "dev.csv", "dev"))
    dev = dev.iloc[:n]
    preds = [" ".join(d.split("\n")[:2]) for d in dev["dialogue"]]
    sums = list(dev["summary"])
    refs = [[sums[i], sums[(i + 1) % len(sums)], sums[(i + 2) % len(sums)]] for i in range(len(sums))]
    return preds, refs


def bench_metric(a):
    from dialsum.metrics import morphs, score_rows
    from rouge import Rouge
    preds, refs = metric_inputs(a.data, a.metric_n)
    log(f"\n== metric: {len(preds)} predictions x 3 references, {a.metric_reps} repetitions, alternating")
    t = time.perf_counter(); morphs("분석기를 불러옵니다."); load_s = time.perf_counter() - t

    def ours():
        return score_rows(preds, refs)

    def package():
        tok = {s: " ".join(morphs(s)) for s in set(preds) | {r for rs in refs for r in rs}}  # each distinct text once
        hyps = [tok[p] for p, rs in zip(preds, refs) for _ in rs]
        gold = [tok[r] for rs in refs for r in rs]
        sc = Rouge().get_scores(hyps, gold)
        rows, k = [], 0
        for rs in refs:
            part = sc[k:k + len(rs)]; k += len(rs)
            f = [100 * sum(s[m]["f"] for s in part) / len(part) for m in ("rouge-1", "rouge-2", "rouge-l")]
            rows.append(f + [sum(f) / 3])
        return rows

    times = {"dialsum": [], "rouge": []}
    for r in range(a.metric_reps):
        for side in (("rouge", "dialsum") if r % 2 else ("dialsum", "rouge")):
            t = time.perf_counter()
            res = ours() if side == "dialsum" else package()
            times[side].append(time.perf_counter() - t)
            if side == "dialsum": d_rows = res
            else: p_rows = res
    diff = max(abs(x - y) for dr, pr in zip(d_rows[["rouge1", "rouge2", "rougeL", "score"]].values.tolist(), p_rows)
               for x, y in zip(dr, pr))
    log(f"  dialsum.score_rows median {med(times['dialsum']):.3f} s; rouge package median {med(times['rouge']):.3f} s; "
        f"largest per-row difference {diff:.2e} points")
    return dict(rows=len(preds), refs_per_row=3, analyzer_load_seconds=round(load_s, 3),
                dialsum_seconds=[round(x, 4) for x in times["dialsum"]], rouge_seconds=[round(x, 4) for x in times["rouge"]],
                mean_score=round(float(d_rows["score"].mean()), 3), max_abs_row_difference=diff)


# ---------------------------------------------------------------- overhead and memory of a demo run
def bench_demo(a, work):
    runs_dir = work / "runs"
    log(f"\n== overhead: `dialsum run {a.demo_config} output.runs_dir={runs_dir.relative_to(ROOT)}`, {a.demo_reps} run(s)")
    out = []
    for r in range(a.demo_reps):
        before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
        cmd = [str(Path(PY).parent / "dialsum"), "run", a.demo_config, f"output.runs_dir={runs_dir.relative_to(ROOT)}"]
        _, wall, rss, tail = run_child(cmd)
        new = [p for p in set(runs_dir.iterdir()) - before if (p / "metrics.json").is_file()]
        if len(new) != 1: raise RuntimeError(f"expected one new run folder with metrics.json in {runs_dir}:\n{tail}")
        m = json.loads((new[0] / "metrics.json").read_text(encoding="utf-8"))
        tr, inf = m["train"]["train_seconds"], m["infer_seconds"]
        res = dict(run=str(new[0].relative_to(ROOT)), wall_seconds=round(wall, 2), train_seconds=tr, infer_seconds=inf,
                   pipeline_seconds=m.get("seconds"), overhead_seconds=round(wall - tr - inf, 2),
                   peak_rss_mib=round(rss, 1), dev_score=m["dev"]["score"], **cell_seconds(new[0] / "run.ipynb", wall))
        out.append(res)
        log(f"  run {r}: wall {wall:.1f} s - train {tr:.1f} s - inference {inf:.1f} s = overhead {res['overhead_seconds']:.1f} s;"
            f" peak RSS {rss:.0f} MiB")
    return out


def bench_agreement_trained(a, demo, work):
    "The agreement check again on the demo run's selected checkpoint: a trained model, so the summaries are real text."
    from dialsum.checkpoints import find_checkpoint
    ck = find_checkpoint(ROOT / demo[-1]["run"]).path
    from transformers import AutoConfig
    n_pos = AutoConfig.from_pretrained(ck).max_position_embeddings
    log(f"\n== agreement on a trained model: {ck.relative_to(ROOT)} (max_source_length {n_pos}), {a.infer_n} test dialogues")
    out = work / "agree_trained.json"
    res, _, _, _ = run_child(worker_cmd(a, "agree", ["--model", rel(ck), "--data", rel(a.data / "test.csv"), "--n",
                                                     str(a.infer_n), "--max-source-length", str(n_pos), "--out", rel(out)]), out)
    res["model"] = str(ck.relative_to(ROOT))
    log(f"  identical: {res['identical']}/{res['rows']} ({res['nonempty']} non-empty); generate_summaries "
        f"{res['dialsum_seconds']:.2f} s, plain {res['plain_seconds']:.2f} s; generated tokens {res['generated_tokens']}")
    if res.get("hf"):
        h = res["hf"]
        log(f"  HF recipe (Seq2SeqTrainer.predict_with_generate, same inputs and settings): identical {h['identical']}/"
            f"{res['rows']} decoded as dialsum decodes; {h['identical_recipe_decoding']} with the recipe's "
            f"batch_decode(skip_special_tokens=True), {h['identical_without_tags']} once dialsum's tags are removed")
    return res


def cell_seconds(nb_path, wall):
    "Where a run's wall time went: papermill's duration of each code cell, and the time outside the notebook."
    try: nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    except (OSError, ValueError): return {}
    cells = [(c["source"] if isinstance(c["source"], str) else "".join(c["source"])).strip().split("\n")[0][:60]
             for c in nb["cells"] if c["cell_type"] == "code"]
    secs = [round(c["metadata"].get("papermill", {}).get("duration") or 0, 2) for c in nb["cells"] if c["cell_type"] == "code"]
    total = nb["metadata"].get("papermill", {}).get("duration") or 0
    return dict(notebook_seconds=round(total, 2), outside_notebook_seconds=round(wall - total, 2),
                cells=[dict(cell=c, seconds=s) for c, s in zip(cells, secs)])


# ---------------------------------------------------------------- table
def row(name, ours, seed, unit, target, met, ratio=None, note=""):
    return dict(metric=name, dialsum=ours, seed=seed, unit=unit, ratio=ratio, target=target, met=met, note=note)


def fmt(x, unit=""):
    if x is None: return "-"
    if isinstance(x, float): x = f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
    return f"{x} {unit}".strip()


def build_table(res, quick):
    rows = []
    tr = res.get("training")
    if tr:
        d, s = tr["dialsum"], tr["seed"]
        ds, ss = med([r["train_samples_per_s"] for r in d]), med([r["train_samples_per_s"] for r in s])
        dt, st = med([r["train_real_tokens_per_s"] for r in d]), med([r["train_real_tokens_per_s"] for r in s])
        dp, sp = med([r["train_padding_share"] for r in d]), med([r["train_padding_share"] for r in s])
        rows += [row("training samples/s", ds, ss, "/s", ">= 2.5x seed", ds >= 2.5 * ss, ds / ss),
                 row("training real tokens/s", dt, st, "/s", "-", None, dt / st),
                 row("training padding share", 100 * dp, 100 * sp, "%", "<= 10%", dp <= 0.10),
                 row("training peak RSS", med([r["peak_rss_mib"] for r in d]), med([r["peak_rss_mib"] for r in s]),
                     "MiB", "report", None)]
        for k, name in PEERS.items():
            if not tr.get(k): continue
            hs, hp = med([r["train_samples_per_s"] for r in tr[k]]), med([r["train_padding_share"] for r in tr[k]])
            target = (">= 1.5x", ds >= 1.5 * hs) if k == "hf_grouped" else ("-", None)
            rows += [row(f"training samples/s vs {name}", ds, hs, "/s", *target, ds / hs,
                         note="seed column: the HF recipe"),
                     row(f"training padding share, {name}", 100 * dp, 100 * hp, "%", "-", None,
                         note="seed column: the HF recipe")]
        if tr.get("dialsum_buckets") and tr.get("hf_grouped"):
            bk, hg = tr["dialsum_buckets"], tr["hf_grouped"]
            bs_, hs = med([r["train_samples_per_s"] for r in bk]), med([r["train_samples_per_s"] for r in hg])
            bp = med([r["train_padding_share"] for r in bk])
            rows += [row("training samples/s, length_buckets (opt-in) vs HF group_by_length", bs_, hs, "/s", ">= 1.5x",
                         bs_ >= 1.5 * hs, bs_ / hs, note=f"padding {100 * bp:.1f} %; seed column: the HF recipe")]
        if tr.get("dialsum_tokens"):
            bt = tr["dialsum_tokens"]
            bs_, bp = med([r["train_samples_per_s"] for r in bt]), med([r["train_padding_share"] for r in bt])
            btok = med([r["train_real_tokens_per_s"] for r in bt])
            hg = tr.get("hf_grouped")
            htok = med([r["train_real_tokens_per_s"] for r in hg]) if hg else None
            rows += [row("training real tokens/s, batch_tokens vs HF group_by_length", btok, htok, "/s",
                         ">= 1.5x" if hg else "-", btok >= 1.5 * htok if hg else None, btok / htok if hg else None,
                         note=f"samples/s {bs_:.3g}; seed column: the HF recipe with group_by_length"),
                     row("training padding share, batch_tokens", 100 * bp, None, "%", "<= 3%", bp <= 0.03)]
    inf = res.get("inference")
    if inf:
        d, s = inf["runs"]["dialsum"], inf["runs"]["seed"]
        de, se = med([r["infer_examples_per_s"] for r in d]), med([r["infer_examples_per_s"] for r in s])
        ag = inf["agreement"]
        rows.append(row("inference examples/s", de, se, "/s", ">= 2x seed", de >= 2 * se, de / se))
        if inf["runs"].get("hf"):
            he = med([r["infer_examples_per_s"] for r in inf["runs"]["hf"]])
            rows.append(row("inference examples/s vs HF predict_with_generate", de, he, "/s", ">= 5x", de >= 5 * he,
                            de / he, note="seed column: the HF recipe"))
        vacuous = ag["nonempty"] == 0  # identical empty strings prove nothing about the generation path
        rows.append(row("identical to plain masked generate (benchmark model)", 100 * ag["share"], None, "%", ">= 99%",
                        None if vacuous else ag["share"] >= 0.99,
                        note=f"{ag['identical']}/{ag['rows']} rows, {ag['nonempty']} non-empty"
                             + (": all summaries empty, so not evidence either way" if vacuous else "")))
    at = res.get("agreement_trained")
    if at:
        rows.append(row("identical to plain masked generate (trained demo model)", 100 * at["share"], None, "%", ">= 99%",
                        at["share"] >= 0.99 if at["nonempty"] else None,
                        note=f"{at['identical']}/{at['rows']} rows, {at['nonempty']} non-empty; {at['model']}"))
        if at.get("hf"):
            h = at["hf"]
            rows.append(row("identical to the HF recipe's predict_with_generate (trained demo model)",
                            100 * h["identical"] / at["rows"], None, "%", ">= 99%", h["identical"] >= 0.99 * at["rows"],
                            note=f"{h['identical']}/{at['rows']} rows decoded as dialsum decodes; with the recipe's "
                                 f"batch_decode(skip_special_tokens=True): {h['identical_recipe_decoding']} "
                                 + ("" if h["identical_recipe_decoding"] >= h["identical"] else
                                    f" ({h['identical_without_tags']} once dialsum's speaker tags are removed: "
                                    "the recipe deletes them)")))
    me = res.get("metric")
    if me:
        d, p = med(me["dialsum_seconds"]), med(me["rouge_seconds"])
        rows.append(row(f"metric seconds ({me['rows']} x 3)", d, p, "s", "<= 1 s", d <= 1.0, p / d,
                        note="seed column: the rouge package on the same Mecab tokens; ratio = its time / ours"))
    de = res.get("demo")
    if de:
        o = med([r["overhead_seconds"] for r in de])
        rows += [row("run overhead", o, None, "s", "<= 15 s", o <= 15,
                     note=f"{res['args']['demo_config']}: wall minus train and inference seconds"),
                 row("demo run peak RSS", med([r["peak_rss_mib"] for r in de]), None, "MiB", "report", None)]
    return rows


def markdown(res):
    q = " (QUICK smoke check: not a measurement)" if res["args"]["quick"] else ""
    lines = [f"# Benchmark results{q}", "",
             f"{res['when']}, {res['machine']['device']}, torch threads {res['args'].get('threads') or res['machine']['torch_threads']}, "
             f"model `{res['model']['path']}` ({res['model']['parameters'] / 1e6:.1f} M parameters, "
             f"d_model {res['model']['d_model']}, {res['model']['encoder_layers']}+{res['model']['decoder_layers']} layers, "
             f"vocabulary {res['model']['vocab_size']}). Medians of {res['args']['reps']} alternating repetitions; "
             "how each figure is measured: [README.md](README.md).", "",
             "| metric | dialsum | seed baseline (or the peer a row names) | ratio | target | met |",
             "|---|---|---|---|---|---|"]
    for r in res["table"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['metric']} | {fmt(r['dialsum'], r['unit'])} | {fmt(r['seed'], r['unit'])} | {ratio} | "
                     f"{r['target']} | {met} |")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    lines += ["", "What a table cannot show (learning with each batching, the token budget's padding on both data sets, "
              "packing's loss, the misses explained) is measured by hand in [FINDINGS.md](FINDINGS.md), "
              "which `make bench` does not rewrite."]
    return "\n".join(lines) + "\n"


def print_table(res):
    w = [max(len(r["metric"]) for r in res["table"]) + 1, 14, 14, 8, 14, 5]
    head = ["metric", "dialsum", "seed baseline", "ratio", "target", "met"]
    log("\n" + "  ".join(h.ljust(n) for h, n in zip(head, w)))
    for r in res["table"]:
        cells = [r["metric"], fmt(r["dialsum"], r["unit"]), fmt(r["seed"], r["unit"]),
                 "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"],
                 "-" if r["met"] is None else ("yes" if r["met"] else "NO")]
        log("  ".join(str(c).ljust(n) for c, n in zip(cells, w)))


def notes(res):
    "Facts a reader of the table needs, derived from this run's numbers."
    out = []
    tr, inf = res.get("training"), res.get("inference")
    if res["args"]["quick"]:
        out.append("QUICK run: few steps, rows and repetitions, and the smoke config for the demo run; the numbers only "
                   "show that the script works.")
    if tr:
        d, pa = tr["dialsum"][0], tr["padding_analysis"]
        if med([r["train_padding_share"] for r in tr["dialsum"]]) > 0.10:
            out.append(f"Padding above 10%: dialsum trains in random order by default ({d['sampler']}), because "
                       "length-sorted batches collapsed the demo's encoder (FINDINGS.md); random order pads "
                       f"{100 * pa['random']:.1f}% of fed tokens over one pass at batch {pa['batch']}. The opt-in "
                       f"length_buckets sampler pads {100 * pa['length_buckets']:.1f}% (transformers' group_by_length "
                       f"{100 * pa['group_by_length']:.1f}%, the seed's file order {100 * pa['file_order_per_batch']:.1f}% "
                       f"per batch). With a fixed batch of {pa['batch']} rows on this {pa['rows']}-row split, the best "
                       f"batches a local search finds (200,000 swaps from a sort by encoder length) still pad "
                       f"{100 * pa['best_fixed_batches_found']:.1f}%: summary and dialogue lengths are only partly "
                       "correlated, so no batching of fixed size sorts both.")
        hg = tr.get("hf_grouped")
        if hg:
            fed = med([r["train_real_tokens_per_s"] / (1 - r["train_padding_share"]) for r in hg])
            best = med([r["train_real_tokens_per_s"] for r in hg])
            out.append(f"The 1.5x target against group_by_length, bounded by this run: the HF recipe fed {fed:.0f} "
                       f"tokens/s of which {100 * med([r['train_padding_share'] for r in hg]):.1f}% padding; a sampler "
                       f"with no padding at all and the same fed-token rate would reach {fed:.0f} real tokens/s, "
                       f"{fed / best:.2f}x the recipe's {best:.0f}. More than that needs less work per token, not "
                       "better batches. The HF recipe counts steps x batch samples "
                       f"({hg[0]['train_samples']}) where the split gives {d['train_samples']} (its last batch is short), "
                       f"so its samples/s is {hg[0]['train_samples'] / d['train_samples']:.3f}x too high.")
        out.append(f"Training: {d['train_steps']} steps of batch {res['args']['batch']} on both sides "
                   f"({d['train_samples']} samples for dialsum, {tr['seed'][0]['train_samples']} for the seed); dialsum's "
                   f"side is the loop of a Trainer built by dialsum.train.make_trainer (sampler {d['sampler']}), timed "
                   "from on_train_begin to the last on_step_end; the seed times its own loop.")
    if inf:
        d = inf["runs"]["dialsum"][0]
        out.append(f"Inference settings: dialsum generate({d['generate_kwargs']}) on length-sorted batches of 32 with the "
                   "attention mask; the seed generate(num_beams=4, no_repeat_ngram_size=2, early_stopping=True, "
                   "max_length=100) on file-order batches of 32 padded to the longest dialogue of the split, without a "
                   "mask. The seed's --max-length is generate's max_length, a total that includes the decoder start "
                   "token: at most 99 new tokens against dialsum's max_new_tokens=100.")
        gt = inf["agreement"]["generated_tokens"]
        out.append(f"Generated tokens per summary (counted on the plain masked generate, end token included): mean "
                   f"{gt['mean']}, max {gt['max']}.")
        if gt["mean"] > 0.9 * d["generate_kwargs"].get("max_new_tokens", 100):
            seed_first = inf["runs"]["seed"][0].get("first_predictions", [])
            blank = seed_first and all(not p.strip() for p in seed_first)
            out.append("The benchmark model is untrained (random weights): dialsum's beams ran to the length limit, so "
                       "the inference figures are the worst case, with no early end of beams"
                       + ("; the seed's first predictions are empty (its best finished beam is the end token alone), "
                          "since the seed does not hold the end token back "
                          "(dialsum's min_new_tokens)" if blank else "") + ".")
        ag = inf["agreement"]
        if ag["nonempty"] == 0:
            out.append("Agreement on the benchmark model is not evidence: every summary is empty on both sides. "
                       "The row for the trained demo model is the meaningful one.")
        elif ag["share"] < 0.99:
            out.append(f"Agreement on the untrained benchmark model: {ag['identical']}/{ag['rows']} rows identical. Its beam "
                       "scores are nearly tied (random weights), so float rounding that depends on the batch's padded "
                       "length (sorted batches are padded less than file-order ones) can flip a beam; examples in "
                       "results.json (inference.agreement.examples_differing).")
    at = res.get("agreement_trained")
    if at:
        out.append(f"Agreement on a trained model: {at['model']} (the selected checkpoint of the run above) on the same "
                   f"{at['rows']} test dialogues: {at['identical']} identical, {at['nonempty']} non-empty, "
                   f"{at['generated_tokens']['mean']} generated tokens per summary on average.")
        if at.get("hf"):
            h = at["hf"]
            out.append(f"On that trained model, generation times in one process (after a warm-up): dialsum "
                       f"{at['dialsum_seconds']:.2f} s, plain masked generate in file order {at['plain_seconds']:.2f} s "
                       f"({at['plain_seconds'] / at['dialsum_seconds']:.2f}x), the HF recipe's predict_with_generate "
                       f"{h['seconds']:.2f} s ({h['seconds'] / at['dialsum_seconds']:.2f}x). Its summaries: "
                       f"{h['identical']}/{at['rows']} identical to dialsum's when decoded as dialsum decodes; the "
                       f"recipe's own batch_decode(skip_special_tokens=True) gives {h['identical_recipe_decoding']} "
                       "identical" + (" (the speaker tags are ordinary tokens of this tokenizer, so both decodings "
                       "keep them)." if h["identical_recipe_decoding"] >= h["identical"] else
                       f", {h['identical_without_tags']} once dialsum's #Person# tags are removed: the recipe deletes "
                       "the speaker tags, which are special tokens.") + f" Generated tokens per summary: mean "
                       f"{at['generated_tokens']['mean']}, max {at['generated_tokens']['max']}, so rows that finish "
                       f"early leave at most {100 * (1 - at['generated_tokens']['mean'] / at['generated_tokens']['max']):.0f}% "
                       "of the decoder steps idle on this model in the plain and HF loops; dialsum's beam search takes "
                       "an example out of its batch once it is done (generation.drop_finished).")
    de = res.get("demo")
    if de:
        r = de[-1]
        cells = sorted(r.get("cells", []), key=lambda c: -c["seconds"])[:5]
        out.append(f"Overhead of {r['run']}: wall {r['wall_seconds']} s = train {r['train_seconds']} s + inference "
                   f"{r['infer_seconds']} s + the rest; {r.get('outside_notebook_seconds')} s of the wall passed outside "
                   "the notebook's cells (CLI start, papermill, kernel start and shutdown); the slowest cells: "
                   + "; ".join(f"`{c['cell']}` {c['seconds']} s" for c in cells) + ".")
    me = res.get("metric")
    if me:
        out.append(f"Metric: {me['rows']} predictions (the first two turns of each dev dialogue) x 3 references (the dev "
                   "summaries of rows i, i+1, i+2), timed from raw text after the Mecab analyzer is loaded; the rouge "
                   "package side analyses each distinct text once with the same analyzer and calls Rouge().get_scores on "
                   f"the space-joined morphemes. Largest per-row difference of the two: {me['max_abs_row_difference']:.2g} "
                   "points.")
    return out


# ---------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke-check the script: 1 repetition, few steps and rows, smoke demo")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions of each training/inference comparison")
    p.add_argument("--train-steps", type=int, default=32, help="training steps (32 x 16 = one pass over the 499 dev rows)")
    p.add_argument("--batch", type=int, default=16, help="training batch size, both sides")
    p.add_argument("--infer-n", type=int, default=499, help="test dialogues generated per inference run")
    p.add_argument("--metric-n", type=int, default=499, help="predictions scored (3 references each)")
    p.add_argument("--metric-reps", type=int, default=5)
    p.add_argument("--demo-config", default="configs/experiments/demo.yaml")
    p.add_argument("--demo-reps", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=["training", "inference", "metric", "demo"],
                   default=["training", "inference", "metric", "demo"])
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads on both sides (0: torch's default, one per core); 1 is steadier on a busy machine")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="with --device cuda: a bfloat16 copy of the model; dialsum trains in its bf16 mixed precision "
                   "and generates in bf16, the seed loads the copy in bf16")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "ko")
    p.add_argument("--seed-script", type=Path, default=SHARED / "bench" / "seed_baseline.py")
    p.add_argument("--peer-script", type=Path, default=SHARED / "bench" / "hf_peer.py",
                   help="the HF recipe (Seq2SeqTrainer), run beside the seed when present")
    p.add_argument("--batch-tokens", type=int, default=0,
                   help="also train dialsum with training.batch_tokens at this budget (0: not)")
    p.add_argument("--results", type=Path, default=None,
                   help="results JSON (default bench/results.json; bench/results_cuda.json with --device cuda; "
                        "bench/work/quick_results.json with --quick); the Markdown table goes next to it")
    a = p.parse_args(argv)
    if a.results is None:
        a.results = BENCH / ("work/quick_results.json" if a.quick else
                             "results_cuda.json" if a.device == "cuda" else "results.json")
    a.results, a.data, a.seed_script = a.results.resolve(), a.data.resolve(), a.seed_script.resolve()
    a.peer_script = a.peer_script.resolve()
    if a.quick:
        a.reps, a.train_steps, a.batch, a.infer_n, a.metric_n, a.metric_reps = 1, 4, 8, 16, 60, 2
        a.demo_config = "configs/experiments/smoke.yaml"
    return a


def main(argv=None):
    a = parse(argv)
    for f, what in ((a.data / "dev.csv", "Korean dev split"), (a.data / "test.csv", "Korean test split"),
                    (a.seed_script, "seed recipe")):
        if not f.is_file():
            log(f"bench: skipped: the {what} {f} is absent (../shared is on CI and developer machines only)")
            return 0
    import torch
    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        log("bench: skipped: --device cuda asked for, but CUDA is not available on this machine "
            f"(torch {torch.__version__}); run it where a GPU is present")
        return 0
    if a.bf16 and not cuda:
        log("bench: --bf16 applies to --device cuda only"); return 2
    work = BENCH / "work"; work.mkdir(parents=True, exist_ok=True)
    spec = KOBART_SPEC if cuda else CPU_SPEC
    name = ("kobart-size" if cuda else "ko-d{d_model}-l{encoder_layers}-v{vocab_size}").format(**spec)
    model_dir = bench_model(spec, ko_texts(a.data), BENCH / "models" / name)
    if a.bf16: model_dir = bf16_copy(model_dir)
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                         f"{os.cpu_count()} cores)"
    res = dict(when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), args={k: rel(v) if isinstance(v, Path)
               else v for k, v in vars(a).items()}, machine=dict(device=device, torch=torch.__version__,
               torch_threads=torch.get_num_threads(), load_average=os.getloadavg()), model=describe_model(model_dir))
    if "training" in a.only:
        res["training"] = bench_training(a, model_dir, work)
        res["training"]["padding_analysis"] = padding_analysis(model_dir, a.data, a.batch)
    if "inference" in a.only:
        runs, ag = bench_inference(a, model_dir, work)
        res["inference"] = dict(runs=runs, agreement=ag)
    if "metric" in a.only: res["metric"] = bench_metric(a)
    if "demo" in a.only and not cuda:
        res["demo"] = bench_demo(a, work)
        res["agreement_trained"] = bench_agreement_trained(a, res["demo"], work)
    res["machine"]["load_average_after"] = os.getloadavg()
    res["table"] = build_table(res, a.quick)
    res["notes"] = notes(res)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(res, ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8")
    md = a.results.with_name(a.results.stem.replace("results", "RESULTS") + ".md")
    md.write_text(markdown(res), encoding="utf-8")
    print_table(res)
    log(f"\nwritten: {a.results}, {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
