"Baseline parity: on the KoBART fixture, dialsum's training tensors for the baseline recipe are what ../shared/bench/seed_baseline.py feeds, except where dialsum differs on purpose (nbs/baseline.ipynb lists each)."
import importlib.util, re

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT
import tokenizer_fixtures as F
from dialsum.config import load_config
from dialsum.data import TAGS, make_demo_data, model_inputs, read_split
from dialsum.features import features, make_collator
from dialsum.models import load_pretrained

SEED = ROOT.parent/'shared'/'bench'/'seed_baseline.py'


@pytest.fixture(scope='module')
def seed():
    "The seed baseline's module (its `tokenize_like_baseline` is what its training loop calls)."
    if not SEED.exists(): pytest.skip(f'{SEED} not present (the shared bench folder is on developer machines only)')
    spec = importlib.util.spec_from_file_location('seed_baseline', SEED)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('parity')
    paths = make_demo_data(d/'data', 64, 8, 8)
    df = read_split(paths['train'], 'train')
    folder = F.kobart(model_inputs(df) + list(df.summary), d/'kobart')
    cfg = load_config(ROOT/'configs/experiments/kobart.yaml', [f'model.name_or_path={folder}'], root=ROOT, check_machine=False)
    return df, folder, cfg


def _baseline_tensors(seed, tok, df, cfg):
    "What seed_baseline.train_steps builds: encoder, `bos + summary` decoder inputs and `summary + eos` labels, whole-split padding."
    enc_len, dec_len = cfg.model.max_source_length, cfg.model.max_target_length
    bos, eos = tok.bos_token or '', tok.eos_token or ''
    enc = seed.tokenize_like_baseline(tok, df['dialogue'], enc_len)
    dec = seed.tokenize_like_baseline(tok, [bos + str(s) for s in df['summary']], dec_len)
    lab = seed.tokenize_like_baseline(tok, [str(s) + eos for s in df['summary']], dec_len)
    return enc, dec, lab


def _rows(t):
    "Unpadded rows of a baseline encoding."
    return [ids[m.bool()].tolist() for ids, m in zip(t['input_ids'], t['attention_mask'])]


def test_tensors_equal_the_seed_baselines_but_for_the_listed_differences(seed, setup):
    "Tag-free rows (so both sides tokenize the same text the same way): equal up to <s>/</s> around the dialogue, the decoder start, -100 and per-batch padding."
    df, folder, cfg = setup
    untag = lambda s: re.sub(r'#Person(\d)#', lambda m: '민수 지영 현우'.split()[int(m[1]) % 3], re.sub(r'#(?!Person)\w+#', '번호', s))
    df = df.assign(dialogue=df.dialogue.map(untag), summary=df.summary.map(untag))[:16]
    tok, model = load_pretrained(str(folder))
    base_tok = AutoTokenizer.from_pretrained(folder)  # as seed_baseline.py loads it
    enc, dec, lab = _baseline_tensors(seed, base_tok, df, cfg)
    # (0) no topic prefix, no task prefix: the same dialogue text goes in
    assert model_inputs(df, cfg.data.prefix, cfg.data.topic_prefix) == list(df.dialogue)
    feats = features(tok, df, cfg)
    for f, e, d, l in zip(feats, _rows(enc), _rows(dec), _rows(lab)):
        assert f['input_ids'] == [tok.bos_token_id] + e + [tok.eos_token_id]  # (1) KoBART's <s> ... </s>, which the tokenizer does not add
        assert f['labels'] == l  # labels: `summary </s>`, the same ids
        assert d[0] == tok.bos_token_id and d[1:] == l[:-1]  # the baseline's decoder reads <s> first ...
    b = make_collator(tok, model)(feats[:4])
    assert (b['decoder_input_ids'][:, 0] == model.config.decoder_start_token_id).all()  # (2) ... dialsum the config's start, </s> (1), as generate does
    assert model.config.decoder_start_token_id == tok.eos_token_id != tok.bos_token_id
    assert int(b['labels'].min()) == -100 and int(lab['input_ids'].min()) >= 0  # (3) label padding -100, not <pad>
    assert b['input_ids'].shape[1] == max(len(f['input_ids']) for f in feats[:4])  # (4) padded to the batch's longest ...
    assert enc['input_ids'].shape[1] == max(map(len, _rows(enc))) > min(map(len, _rows(enc)))  # ... not to the split's longest
    assert (lab['input_ids'] == base_tok.pad_token_id).any()  # the baseline computes the loss on <pad> labels


def test_tagged_rows_and_truncation_differ_only_as_listed(seed, setup):
    "With tags (added as special tokens, as the competition baseline does), only the piece right after a tag differs; a cut summary keeps its </s> in dialsum only."
    df, folder, cfg = setup
    tok, _ = load_pretrained(str(folder))
    base_tok = AutoTokenizer.from_pretrained(folder)
    base_tok.add_special_tokens({'additional_special_tokens': TAGS})  # the competition baseline's config.yaml special_tokens
    enc, _, lab = _baseline_tensors(seed, base_tok, df[:8], cfg)
    feats = features(tok, df[:8], cfg)
    for f, e, l in zip(feats, _rows(enc), _rows(lab)):
        ours = f['input_ids'][1:-1]
        a, b = base_tok.convert_ids_to_tokens(e), tok.convert_ids_to_tokens(ours)
        assert len(a) == len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:  # (5) the baseline's tokenizer starts the text after a tag as a new word ('▁은'); dialsum keeps it glued ('은')
                assert a[i - 1] in TAGS and x == '▁' + y, (a[i-1:i+1], b[i-1:i+1])
        assert base_tok.decode(e).replace(' ', '') == tok.decode(ours).replace(' ', '')  # the same text otherwise
    long = df[:1].assign(summary='아주 긴 요약 ' * 80)
    _, _, lab = _baseline_tensors(seed, base_tok, long, cfg)
    assert lab['input_ids'].shape[1] == 100 and int(lab['input_ids'][0, -1]) != base_tok.eos_token_id  # (6) the baseline cuts its </s> off
    f = features(tok, long, cfg)[0]
    assert len(f['labels']) == 100 and f['labels'][-1] == tok.eos_token_id and f['labels'].count(tok.eos_token_id) == 1
