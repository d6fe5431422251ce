"""Batches by a token budget (`training.batch_tokens`): every row once per epoch, the budget kept, the padding on real
data, and the same number of steps on every process under accelerate."""
import json, os, subprocess, textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, ROOT
from dialsum.train import TokenBudgetSampler, padding_share, token_batches

EN_TRAIN = ROOT.parent/'shared'/'data'/'dialogsum_en'/'train.csv'


def real_lengths(path: Path, split: str)->tuple[np.ndarray, np.ndarray]:
    "Input and label tokens of a real split under a byte-level BPE of 8,000 pieces trained on it (512 and 100 kept)."
    from dialsum.data import clean_split, model_inputs, read_split
    from dialsum.features import make_features
    from dialsum.models import train_tokenizer
    df, _ = clean_split(read_split(path, split))
    srcs = model_inputs(df)
    tok = train_tokenizer(srcs[:3000] + list(df['summary'][:3000]), 8000)
    f = make_features(tok, srcs, list(df['summary']), 512, 100)
    return np.array([len(x['input_ids']) for x in f]), np.array([len(x['labels']) for x in f])


def check_batches(bs, src, lab, budget):
    "Every row exactly once; no batch of two or more rows over the budget."
    assert sorted(np.concatenate(bs).tolist()) == list(range(len(src)))
    assert all(len(b) * (src[b].max() + lab[b].max()) <= budget for b in bs if len(b) > 1)


@pytest.mark.parametrize('which', ['ko_dev', 'en_train'])
def test_padding_at_most_3_percent_on_real_data(which, real_ko):
    "On the Korean dev split (499 rows) and DialogSum's English train split (12,460 rows), at most 3% of the fed tokens pad."
    if which == 'en_train' and not EN_TRAIN.exists(): pytest.skip(f'{EN_TRAIN} is absent (CI and developer machines only)')
    src, lab = real_lengths(real_ko/'dev.csv', 'dev') if which == 'ko_dev' else real_lengths(EN_TRAIN, 'train')
    budget = 2048 if which == 'ko_dev' else 4096
    bs = token_batches(src, lab, budget, 0.03, seed=42)
    check_batches(bs, src, lab, budget)
    share = padding_share(bs, src, lab)
    perm = np.random.default_rng(0).permutation(len(src))
    random16 = padding_share([perm[i:i+16] for i in range(0, len(perm), 16)], src, lab)
    print(f'{which}: {len(src)} rows in {len(bs)} batches of {len(src) / len(bs):.1f} rows, padding {share:.2%} '
          f'(random order, 16 rows: {random16:.2%}), budget used {(src + lab).sum() / (len(bs) * budget):.0%}')
    assert share <= 0.03
    assert share < random16 / 5  # far below what a random order pads


def test_every_row_once_per_epoch_and_processes_share_it():
    "Each epoch every row once, a new order of the same batches; two processes: the same number of batches, disjoint, all rows."
    g = np.random.default_rng(3)
    src, lab = g.integers(20, 400, 300), g.integers(5, 80, 300)
    one = TokenBudgetSampler(src, lab, max_tokens=1500, seed=7)
    epochs = []
    for e in range(3):
        one.set_epoch(e); epochs.append(list(one))
        check_batches([np.array(b) for b in epochs[-1]], src, lab, 1500)
    assert len({json.dumps(e) for e in epochs}) == 3 and len(epochs[0]) == len(one)
    for world in (2, 3):
        shards = [TokenBudgetSampler(src, lab, max_tokens=1500, seed=7, world_size=world, rank=r) for r in range(world)]
        for s in shards: s.set_epoch(1)
        got = [list(s) for s in shards]
        assert len({len(g) for g in got}) == 1 and len(got[0]) == len(shards[0])
        assert sorted(i for g in got for b in g for i in b) == list(range(len(src)))


def test_decoder_only_lengths():
    "Without labels (decoder-only: the labels are the inputs) the budget counts the inputs alone."
    src = np.random.default_rng(1).integers(30, 300, 200)
    bs = token_batches(src, None, 1200, 0.03)
    assert sorted(np.concatenate(bs).tolist()) == list(range(200))
    assert all(len(b) * src[b].max() <= 1200 for b in bs) and padding_share(bs, src) <= 0.03


SCRIPT = textwrap.dedent('''
    import json, sys, tempfile
    from pathlib import Path
    from accelerate import PartialState
    from dialsum.config import ScratchModel, validate
    from dialsum.data import make_demo_data, read_split, model_inputs
    from dialsum.features import features
    from dialsum.models import build_scratch_model, load_pretrained
    from dialsum.train import make_trainer
    out, tmp = Path(sys.argv[1]), Path(tempfile.mkdtemp())
    paths = make_demo_data(tmp/'data', n_train=96, n_dev=4, n_test=4, seed=0)
    df = read_split(paths['train'], 'train')
    spec = ScratchModel(vocab_size=400, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=32)
    tok, model = load_pretrained(str(build_scratch_model(model_inputs(df) + list(df.summary), spec, tmp/'m', seed=0)))
    cfg = validate({'experiment': 'x', 'model': {'scratch': spec.model_dump(), 'max_source_length': 256},
                    'training': {'batch_tokens': 700, 'num_train_epochs': 1, 'eval_strategy': 'no', 'use_cpu': True}})
    tr = make_trainer(cfg, tok, model, features(tok, df, cfg), None, None, tmp/'ckpt')
    dl = tr.get_train_dataloader()
    dl.set_epoch(0)
    rows = [b.tolist() if hasattr(b, 'tolist') else list(b) for b in dl.batch_sampler]
    sizes = [int(b['input_ids'].shape[0]) for b in dl]
    tr.train()
    rank = PartialState().process_index
    (out/f'rank{rank}.json').write_text(json.dumps(dict(len=len(dl), rows=rows, sizes=sizes, steps=tr.state.global_step)))
''')


@pytest.mark.slow
def test_two_processes_own_batches_same_steps(tmp_path):
    "Under accelerate (2 CPU processes): each process its own batches, the same number of steps, every row once."
    script = tmp_path/'shard.py'; script.write_text(SCRIPT)
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    p = subprocess.run([str(BIN/'accelerate'), 'launch', '--config_file', str(ROOT/'configs'/'accelerate'/'ddp_cpu.yaml'),
                        str(script), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    r = [json.loads((tmp_path/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert r[0]['len'] == r[1]['len'] == len(r[0]['rows']) == len(r[1]['rows']) and r[0]['steps'] == r[1]['steps'] == r[0]['len']
    assert sorted(i for x in r for b in x['rows'] for i in b) == list(range(96))  # disjoint, together every row once
    assert [len(b) for b in r[0]['rows']] == r[0]['sizes']  # the loader fed exactly these batches


@pytest.fixture(scope='module')
def tiny_llama(tmp_path_factory):
    "A tiny scratch Llama, its tokenizer, the demo training split and a causal config that packs."
    from dialsum.config import ScratchModel, validate
    from dialsum.data import make_demo_data, model_inputs, read_split
    from dialsum.models import build_scratch_model, load_pretrained
    tmp = tmp_path_factory.mktemp('llama')
    df = read_split(make_demo_data(tmp/'data', n_train=48, n_dev=4, n_test=4, seed=0)['train'], 'train')
    spec = ScratchModel(arch='llama', vocab_size=500, d_model=32, encoder_layers=2, decoder_layers=2, attention_heads=2,
                        ffn_dim=64, max_position_embeddings=512)
    tok, model = load_pretrained(str(build_scratch_model(model_inputs(df) + list(df.summary), spec, tmp/'m', seed=0)),
                                 family='causal')
    cfg = validate({'experiment': 'x', 'model': {'scratch': spec.model_dump(), 'family': 'causal', 'max_source_length': 300},
                    'training': {'packing': True, 'max_steps': 6, 'per_device_train_batch_size': 8, 'eval_strategy': 'no',
                                 'learning_rate': 3e-3, 'warmup_steps': 0, 'logging_steps': 1, 'use_cpu': True}})
    return tok, model, df, cfg, tmp


def test_packed_loss_equals_unpacked(tiny_llama):
    "The trainer's loss on a packed batch (one row, no padding) equals the padded batch's, in training mode, within 1e-4."
    import torch
    from dialsum.features import features, make_collator
    from dialsum.train import make_trainer
    tok, model, df, cfg, tmp = tiny_llama
    feats = features(tok, df, cfg)[:8]
    tr = make_trainer(cfg, tok, model, feats, None, None, tmp/'ckpt_loss')
    packed, padded = tr.data_collator(feats), make_collator(tok, model)(feats)
    assert packed['input_ids'].shape == (1, sum(len(f['input_ids']) for f in feats))  # zero padding
    assert padded['input_ids'].numel() > packed['input_ids'].numel()
    model.train()
    for m in model.modules():  # dropout off: the same forward pass twice
        if isinstance(m, torch.nn.Dropout): m.p = 0.0
        if hasattr(m, 'attention_dropout'): m.attention_dropout = 0.0
    with torch.no_grad():
        lp, lu = float(tr.compute_loss(model, packed)), float(tr.compute_loss(model, padded))
        leaky = float(model(**packed, use_cache=True).loss)  # what the cache would have done: attention across examples
    assert abs(lp - lu) < 1e-4, (lp, lu)
    assert abs(leaky - lu) > 1e-4, (leaky, lu)  # the check can fail: contamination shows at this size


@pytest.mark.slow
def test_packing_trains(tiny_llama):
    "A decoder-only model trains on packed batches: every step one row without padding, and the loss goes down."
    from dialsum.features import features
    from dialsum.train import make_trainer, train
    tok, model, df, cfg, tmp = tiny_llama
    tr = make_trainer(cfg, tok, model, features(tok, df, cfg), None, None, tmp/'ckpt_train')
    shapes, inner = [], tr.data_collator
    tr.data_collator = lambda fs: (b := inner(fs), shapes.append((tuple(b['input_ids'].shape), len(fs))))[0]
    res = train(tr)
    losses = [h['loss'] for h in tr.state.log_history if 'loss' in h]
    assert res['global_step'] == 6 and losses[-1] < losses[0], losses
    assert all(s[0] == 1 for s, _ in shapes[:6]) and all(n == 8 for _, n in shapes[:6])


@pytest.fixture
def real_token_runs(english_holdout):
    "Tiny models trained 100 steps on 400 DialogSum English dialogues, scored on the next 100: random order of 16 rows, and a "
    "token budget."
    return {side: english_holdout(side) for side in ('random', 'tokens')}


@pytest.mark.slow
def test_token_budget_not_worse_on_real_data(real_token_runs):
    "On 100 held-out DialogSum English dialogues (the issue's real-data check), the token budget scores at most 1 point below "
    "random order at the same 100 steps."
    import pandas as pd
    from dialsum.metrics import bootstrap_ci
    r = real_token_runs
    s = {k: pd.read_csv(v/'predictions_dev.csv', keep_default_na=False).set_index('fname')['score'] for k, v in r.items()}
    steps = {k: json.loads((v/'metrics.json').read_text())['train']['global_step'] for k, v in r.items()}
    assert steps['tokens'] == steps['random'] == 100
    lo, hi = bootstrap_ci((s['tokens'] - s['random'].reindex(s['tokens'].index)).values)
    print(f"dev score: random {s['random'].mean():.2f}, token budget {s['tokens'].mean():.2f}, paired 95% interval "
          f"{lo:.2f}..{hi:.2f}")
    assert hi > -1.0, (s['tokens'].mean(), s['random'].mean(), lo, hi)  # the tolerance of test_real_data.py's length buckets
