#!/usr/bin/env python3
"""dialsum's side of the benchmark, one measurement per process (so its peak RSS is its own).

    python bench/worker.py train --model DIR --data dev.csv --steps 32 --batch 16 --out r.json
    python bench/worker.py infer --model DIR --data test.csv --n 499 --out r.json   # dialsum.inference.generate_summaries
    python bench/worker.py plain --model DIR --data test.csv --n 499 --out r.json   # plain masked generate, file order
    python bench/worker.py hf --model DIR --data test.csv --n 499 --out r.json      # Seq2SeqTrainer.predict_with_generate
    python bench/worker.py agree --model CKPT --data test.csv --n 499 --out r.json   # the three above, rows compared

Every side reads the split with dialsum.data (read_split + clean_split + model_inputs), as a run does.
`bench/bench.py` runs these and the seed recipe alternately; this file only measures.
"""
import argparse, json, os, re, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from transformers import TrainerCallback

from dialsum.config import Config, GenerationConfig, ModelConfig, TrainingConfig
from dialsum.data import clean_split, model_inputs, read_split
from dialsum.models import load_pretrained
from dialsum.train import make_trainer
try:  # generation lives in dialsum.inference since issue 12, in dialsum.features before, dialsum.train before that
    from dialsum.features import make_features
    from dialsum.inference import decode_summaries, generate_summaries, generation_kwargs
except ImportError:
    try:
        from dialsum.features import decode_summaries, generate_summaries, generation_kwargs, make_features
    except ImportError:
        from dialsum.inference import generate_summaries
        from dialsum.train import decode_summaries, generation_kwargs, make_features

ROOT = Path(__file__).resolve().parents[1]


def split_inputs(path, split, n=None):
    "Cleaned encoder texts (and summaries, or None) of the first `n` rows of a CSV, read as a run reads it."
    df, _ = clean_split(read_split(path, split))
    if n: df = df.iloc[:n]
    return model_inputs(df), (list(df["summary"]) if "summary" in df and split != "test" else None)


def load(model_dir, device, bf16):
    "Tokenizer and model of `model_dir` through dialsum's loader (float32), on `device`, cast to bfloat16 if asked."
    tok, model = load_pretrained(str(model_dir))
    if bf16: model = model.to(torch.bfloat16)
    return tok, model.to(device)


def gen_config(a):
    "The issue's generation settings: 4 beams, no_repeat_ngram_size 2, up to 100 new tokens, batches of 32."
    return GenerationConfig(num_beams=a.num_beams, no_repeat_ngram_size=2, max_new_tokens=a.max_new_tokens,
                            early_stopping=True, batch_size=a.gen_batch)


def transformers_loop(gen):
    "The same settings on transformers' own beam search loop (dialsum's `drop_finished` off, where the schema has it)."
    return gen.model_copy(update={"drop_finished": False}) if "drop_finished" in GenerationConfig.model_fields else gen


def shown(kw):
    "Generation keyword arguments as JSON can hold them: a custom decoding loop by its name."
    return {k: v.__name__ if callable(v) else v for k, v in kw.items()}


def peak_cuda():
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


class _LoopTimer(TrainerCallback):
    "Wall time from the start of the training loop to the end of its last optimizer step (checkpoint saving excluded)."
    def on_train_begin(self, args, state, control, **kw):
        _sync(); self.t0 = time.perf_counter()
    def on_step_end(self, args, state, control, **kw):
        _sync(); self.t1 = time.perf_counter()


def _counting(collate, seen):
    "Wrap the Trainer's collator: record fed and real (unpadded) tokens of every batch it builds."
    def wrapped(features):
        b = collate(features)
        lab = b["labels"]
        seen.append(dict(samples=int(b["input_ids"].shape[0]),
                         fed=int(b["input_ids"].numel() + lab.numel()),
                         real=int(b["attention_mask"].sum() + (lab != -100).sum())))
        return b
    return wrapped


def run_train(a):
    "dialsum's training path: make_features + make_trainer (its default sampler, per-batch padding), max_steps, eval off."
    device = a.device
    tok, model = load(a.model, "cpu", False)  # float32 weights; the Trainer moves them and, with --bf16, autocasts
    srcs, sums = split_inputs(a.data, "dev")
    t = time.perf_counter()
    feats = make_features(tok, srcs, sums, a.max_source_length, a.max_target_length)
    features_s = time.perf_counter() - t
    cfg = Config(experiment="bench", model=ModelConfig(name_or_path=str(a.model)),
                 training=TrainingConfig(max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=a.lr,
                                         batch_tokens=getattr(a, "batch_tokens", 0) or None,
                                         **({"train_sampling_strategy": a.sampler} if getattr(a, "sampler", None) else {}),
                                         eval_strategy="no", early_stopping_patience=None, warmup_steps=0,
                                         use_cpu=device == "cpu",
                                         seed=a.seed, **_precision(a)))
    with tempfile.TemporaryDirectory(dir=a.work) as out:
        trainer = make_trainer(cfg, tok, model, feats, None, None, Path(out))
        seen, timer = [], _LoopTimer()
        trainer.data_collator = _counting(trainer.data_collator, seen)
        trainer.add_callback(timer)
        t = time.perf_counter()
        trainer.train()
        train_call_s = time.perf_counter() - t
    steps = trainer.state.global_step
    batches = seen[:steps]  # one batch per step (no gradient accumulation)
    dt = timer.t1 - timer.t0
    n, fed, real = (sum(b[k] for b in batches) for k in ("samples", "fed", "real"))
    return dict(side="dialsum", train_steps=steps, train_samples=n, train_seconds=round(dt, 3),
                train_samples_per_s=round(n / dt, 3), train_tokens_fed=fed, train_tokens_real=real,
                train_real_tokens_per_s=round(real / dt, 1), train_padding_share=round(1 - real / fed, 4),
                features_seconds=round(features_s, 3), train_call_seconds=round(train_call_s, 3),
                sampler=type(trainer._get_train_sampler(trainer.train_dataset)).__name__,
                torch_threads=torch.get_num_threads(), device=str(trainer.args.device), peak_cuda_mib=peak_cuda())


def _precision(a):
    "dialsum's own mixed precision for --bf16 (older schemas without training.precision: float32)."
    return dict(precision="bf16") if a.bf16 and "precision" in TrainingConfig.model_fields else {}


def run_infer(a):
    "dialsum.inference.generate_summaries: tokenized once, length-sorted batches with attention masks, order restored."
    tok, model = load(a.model, a.device, a.bf16)
    srcs, _ = split_inputs(a.data, "test", a.n)
    _sync()
    t = time.perf_counter()
    preds = generate_summaries(model, tok, srcs, gen_config(a), a.max_source_length, progress=False)
    _sync()
    dt = time.perf_counter() - t
    return dict(side="dialsum", infer_examples=len(preds), infer_seconds=round(dt, 3),
                infer_examples_per_s=round(len(preds) / dt, 3), new_tokens=_new_tokens(tok, preds),
                generate_kwargs=shown(generation_kwargs(gen_config(a))),
                predictions=preds, torch_threads=torch.get_num_threads(), device=str(model.device),
                peak_cuda_mib=peak_cuda())


def run_plain(a):
    "The agreement reference: plain `generate` in file order, batches of the same size, with the attention mask."
    tok, model = load(a.model, a.device, a.bf16)
    srcs, _ = split_inputs(a.data, "test", a.n)
    gen = transformers_loop(gen_config(a))
    model.eval()
    preds, steps = [], []
    _sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(srcs), gen.batch_size):
            enc = tok(srcs[s:s + gen.batch_size], max_length=a.max_source_length, truncation=True, padding=True,
                      return_tensors="pt").to(model.device)
            ids = model.generate(**enc, **generation_kwargs(gen)).cpu()
            preds += decode_summaries(tok, ids)
            steps += (ids[:, 1:] != tok.pad_token_id).sum(1).tolist()  # new tokens after the decoder start, end token included
    _sync()
    dt = time.perf_counter() - t
    return dict(side="plain", infer_examples=len(preds), infer_seconds=round(dt, 3),
                infer_examples_per_s=round(len(preds) / dt, 3), new_tokens=_new_tokens(tok, preds),
                generated_tokens=dict(mean=round(sum(steps) / max(len(steps), 1), 1), max=max(steps, default=0)),
                predictions=preds, device=str(model.device))


def run_hf(a):
    "The HF recipe's inference on the same inputs: `Seq2SeqTrainer.predict` with `predict_with_generate`, file order."
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
    tok, model = load(a.model, a.device, a.bf16)
    srcs, _ = split_inputs(a.data, "test", a.n)
    enc = tok(srcs, max_length=a.max_source_length, truncation=True)
    rows = [dict(input_ids=i, attention_mask=m) for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    gen = generation_kwargs(transformers_loop(gen_config(a)))  # the recipe runs transformers' own loop
    with tempfile.TemporaryDirectory(dir=a.work) as out:
        args = Seq2SeqTrainingArguments(output_dir=out, per_device_eval_batch_size=a.gen_batch, predict_with_generate=True,
                                        report_to="none", disable_tqdm=True, use_cpu=a.device == "cpu")
        trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tok)
        _sync()
        t = time.perf_counter()
        ids = trainer.predict(rows, **gen).predictions
        _sync()
        dt = time.perf_counter() - t
    ids = torch.tensor(np.where(ids < 0, tok.pad_token_id, ids))  # the Trainer pads rows of different lengths with -100
    recipe = [s.strip() for s in tok.batch_decode(ids, skip_special_tokens=True)]  # the example script's decoding
    return dict(side="hf", infer_examples=len(recipe), infer_seconds=round(dt, 3), predictions=decode_summaries(tok, ids),
                recipe_predictions=recipe, generate_kwargs=gen)


def run_agree(a):
    "generate_summaries and the plain masked generate on the same model and inputs, in one process; rows compared."
    tok, model = load(a.model, a.device, a.bf16)  # warm up once, so neither timing carries the first call's set-up
    with torch.inference_mode():
        model.eval().generate(**tok(["안녕하세요"], return_tensors="pt").to(model.device), max_new_tokens=2)
    ours, plain, hf = run_infer(a), run_plain(a), run_hf(a)
    same = [x == y for x, y in zip(ours["predictions"], plain["predictions"])]
    same_hf = [x == y for x, y in zip(ours["predictions"], hf["predictions"])]
    same_recipe = [x == y for x, y in zip(ours["predictions"], hf["recipe_predictions"])]
    tags = [x == y for x, y in zip((_no_tags(p) for p in ours["predictions"]), hf["recipe_predictions"])]
    return dict(model=str(a.model), rows=len(same), identical=sum(same), share=sum(same) / len(same),
                nonempty=sum(bool(x) for x in ours["predictions"]), dialsum_seconds=ours["infer_seconds"],
                plain_seconds=plain["infer_seconds"], new_tokens=ours["new_tokens"],
                generated_tokens=plain["generated_tokens"],
                examples_differing=[dict(row=i, dialsum=x, plain=y) for i, (x, y, z) in
                                    enumerate(zip(ours["predictions"], plain["predictions"], same)) if not z][:3],
                first_predictions=ours["predictions"][:3],
                hf=dict(identical=sum(same_hf), seconds=hf["infer_seconds"], generate_kwargs=hf["generate_kwargs"],
                        identical_recipe_decoding=sum(same_recipe), identical_without_tags=sum(tags),
                        examples_differing=[dict(row=i, dialsum=x, hf=y, hf_recipe_decoding=z) for i, (x, y, z, w) in
                                            enumerate(zip(ours["predictions"], hf["predictions"],
                                                          hf["recipe_predictions"], same_recipe)) if not w][:3]))


def _no_tags(text):
    "`text` as `batch_decode(skip_special_tokens=True)` leaves it when the speaker and mask tags are special tokens."
    return " ".join(re.sub(r"#\w+#", " ", text).split())



def _sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


def _new_tokens(tok, preds):
    "Mean and max length of the decoded summaries in tokens when tokenized again (not the generated count)."
    lens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in preds] or [0]
    return dict(mean=round(sum(lens) / len(lens), 1), max=max(lens))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "infer", "plain", "hf", "agree"])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batch-tokens", type=int, default=0, help="train: training.batch_tokens (0: rows of --batch)")
    p.add_argument("--sampler", help="train: training.train_sampling_strategy (default: dialsum's default, random)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--n", type=int, default=499)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--max-source-length", type=int, default=512)
    p.add_argument("--max-target-length", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    res = dict(train=run_train, infer=run_infer, plain=run_plain, hf=run_hf, agree=run_agree)[a.what](a)
    a.out.write_text(json.dumps(res, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
