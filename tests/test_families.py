"Every model family (BART, T5, decoder-only), with and without LoRA, trains, scores, submits and reloads; and the checks that guard them."
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import ROOT, dialsum, run_folders
from dialsum.checkpoints import find_checkpoint
from dialsum.config import ConfigError, load_config
from dialsum.data import model_inputs, read_split
from dialsum.inference import predict
from dialsum.lora import load_checkpoint
from dialsum.models import ModelError, is_4bit
from dialsum.pipeline import run_pipeline
from dialsum.submissions import submission_problems

FAMILIES = {  # config: (family, lora)
    'smoke': ('seq2seq', False), 'tiny_bart_lora': ('seq2seq', True),
    'tiny_t5': ('seq2seq', False), 'tiny_t5_lora': ('seq2seq', True),
    'tiny_causal': ('causal', False), 'tiny_causal_lora': ('causal', True),
}
THROUGH_NOTEBOOK = {'tiny_t5', 'tiny_causal', 'tiny_bart_lora'}  # these go through `dialsum run` (papermill); the rest through the script path
PREDICT_AGAIN = {'tiny_bart_lora', 'tiny_causal'}  # a LoRA run and a decoder-only run: `dialsum predict --run` rewrites the submission


def _run(name, runs_dir):
    "Run the experiment `name` into `runs_dir` and return its run folder."
    if name in THROUGH_NOTEBOOK:
        p = dialsum('run', f'configs/experiments/{name}.yaml', f'output.runs_dir={runs_dir}')
        assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
        (run,) = run_folders(runs_dir)
        assert (run/'run.ipynb').exists()
        return run
    return run_pipeline(f'configs/experiments/{name}.yaml', [f'output.runs_dir={runs_dir}'], root=ROOT).path


@pytest.mark.slow
@pytest.mark.parametrize('name', list(FAMILIES))
def test_family_trains_scores_submits_reloads(name, tmp_path):
    "A short run: the loss goes down, dev is scored, the submission is valid, the best checkpoint is found and reloads to the same outputs."
    family, lora = FAMILIES[name]
    run = _run(name, tmp_path)
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'completed', md.get('error')
    cfg = load_config(run/'config.yaml', root=ROOT)
    assert (cfg.model.family, cfg.lora is not None) == (family, lora)
    # the loss goes down
    state = json.loads((run/'checkpoints'/'trainer_state.json').read_text())
    losses = [h['loss'] for h in state['log_history'] if 'loss' in h]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    # dev scoring, by generation, at every evaluation and at the end
    assert [h['step'] for h in state['log_history'] if 'eval_score' in h] == [4, 8]
    metrics = json.loads((run/'metrics.json').read_text())
    assert 0 <= metrics['dev']['score'] <= 100
    dev = pd.read_csv(run/'predictions_dev.csv', keep_default_na=False)
    assert len(dev) == 8 and abs(dev['score'].mean() - metrics['dev']['score']) < 1e-6
    # a valid submission, promoted, with one row in the index
    test_fnames = pd.read_csv(run/'data'/'test.csv')['fname'].tolist()
    assert submission_problems(run/'submission.csv', test_fnames) == []
    assert md['promoted'] is True
    assert pd.read_csv(tmp_path/'index.csv')['run_id'].tolist() == [run.name]
    # the device report is in the record, with LoRA training a fraction of the parameters
    p = md['device']['parameters']
    assert (p['trainable'] < p['total']) == lora and md['device']['processes'] == 1
    # the checkpoint finder picks the trainer's best checkpoint; a LoRA checkpoint holds adapters only
    choice = find_checkpoint(run)
    assert choice.path == run/md['best_checkpoint'] and choice.score == max(h['eval_score'] for h in state['log_history'] if 'eval_score' in h)
    files = {f.name for f in choice.path.iterdir()}
    assert ({'adapter_config.json', 'adapter_model.safetensors'} <= files) == lora
    assert ('model.safetensors' in files) == (not lora)
    # reloaded from disk, it gives exactly the recorded dev predictions
    tok, model = load_checkpoint(choice.path, cfg)
    again = predict(model, tok, read_split(run/'data'/'dev.csv', 'dev'), cfg, progress=False)
    assert again['summary'].tolist() == dev['prediction'].tolist()
    # `dialsum predict --run RUN` (a fresh process, the run's best checkpoint and config) writes the same submission, byte for byte
    if name in PREDICT_AGAIN:
        out = tmp_path/'predicted_again.csv'
        p = dialsum('predict', '--run', run, '--output', out)
        assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
        assert out.read_bytes() == (run/'submission.csv').read_bytes()


def test_t5_decoder_inputs_are_labels_shifted_right(tmp_path):
    "The tiny T5's decoder reads <pad> and then the summary one step behind: never the labels themselves."
    from dialsum.config import ScratchModel
    from dialsum.data import make_demo_data
    from dialsum.features import make_collator, make_features
    from dialsum.models import build_scratch_model, load_pretrained
    df = read_split(make_demo_data(tmp_path/'data', 24, 4, 4)['train'], 'train')
    spec = ScratchModel(arch='t5', vocab_size=500, d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=64)
    tok, model = load_pretrained(str(build_scratch_model(model_inputs(df) + list(df.summary), spec, tmp_path/'t5')))
    b = make_collator(tok, model)(make_features(tok, model_inputs(df[:3], 'summarize: '), list(df.summary[:3]), 256, 64))
    labels = b['labels'].masked_fill(b['labels'] == -100, tok.pad_token_id)
    assert model.config.decoder_start_token_id == tok.pad_token_id == 0
    assert (b['decoder_input_ids'][:, 0] == 0).all()
    assert torch.equal(b['decoder_input_ids'][:, 1:], labels[:, :-1])
    assert not torch.equal(b['decoder_input_ids'], labels)
    assert tok.decode(b['labels'][0][b['labels'][0] != -100], skip_special_tokens=True) == df.summary[0]  # speaker tags kept


def test_decoder_only_prompt_labels_and_batched_generation(tmp_path):
    "Prompt positions are labelled -100; left-padded batches generate what one-by-one generation does."
    from dialsum.config import GenerationConfig, ScratchModel
    from dialsum.data import make_demo_data
    from dialsum.features import make_features, prompt_parts
    from dialsum.inference import generate_summaries
    from dialsum.models import build_scratch_model, load_pretrained
    paths = make_demo_data(tmp_path/'data', 24, 6, 4)
    df, dev = read_split(paths['train'], 'train'), read_split(paths['dev'], 'dev')
    spec = ScratchModel(arch='llama', vocab_size=500, d_model=32, decoder_layers=1, attention_heads=2, ffn_dim=64)
    tok, model = load_pretrained(str(build_scratch_model(model_inputs(df) + list(df.summary), spec, tmp_path/'llama')), family='causal')
    cfg = load_config('configs/experiments/tiny_causal.yaml', root=ROOT)
    pr = prompt_parts(tok, cfg.model)
    for f, s in zip(make_features(tok, model_inputs(df[:4]), list(df.summary[:4]), 192, 64, pr), df.summary[:4]):
        n = len(f['input_ids']) - f['labels'].count(-100)
        assert f['labels'][:-n] == [-100] * (len(f['labels']) - n) and f['input_ids'][:len(pr[0])] == pr[0]
        assert f['labels'][-n:] == f['input_ids'][-n:] and f['labels'][-1] == tok.eos_token_id
        assert tok.decode(f['labels'][-n:], skip_special_tokens=True) == s
    srcs = model_inputs(dev)
    for gen in (GenerationConfig(num_beams=1, max_new_tokens=10, batch_size=4), GenerationConfig(num_beams=2, max_new_tokens=10, batch_size=4)):
        batched = generate_summaries(model, tok, srcs, gen, 192, False, pr)
        assert batched == [generate_summaries(model, tok, [s], gen, 192, False, pr)[0] for s in srcs]


def test_lora_unknown_module_lists_valid_ones(tmp_path):
    "A LoRA target that is not a layer of the architecture stops the run with the valid names; the run is recorded as failed."
    with pytest.raises(ModelError, match=r"lora.target_modules: query is not a linear layer of this t5 model; valid names: k, o, q, v, wi, wo"):
        run_pipeline('configs/experiments/tiny_t5_lora.yaml', [f'output.runs_dir={tmp_path}', 'lora.target_modules=[q, query]'], root=ROOT)
    (run,) = run_folders(tmp_path)
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and 'valid names: k, o, q, v, wi, wo' in md['error']


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: QLoRA may run here')
def test_qlora_on_cpu_fails_at_validation(tmp_path):
    "A QLoRA config is refused before any run folder exists, saying why and what to do."
    p = dialsum('run', 'configs/experiments/tiny_qlora.yaml', f'output.runs_dir={tmp_path}')
    assert p.returncode == 2
    assert 'model.quantization: 4bit (QLoRA) needs a CUDA GPU' in p.stderr and 'set model.quantization: null' in p.stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match='solar_qlora.yaml: model.quantization: 4bit'):
        load_config('configs/experiments/solar_qlora.yaml', root=ROOT)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason='QLoRA needs a CUDA GPU; this machine has none')
def test_qlora_run_is_4bit_and_reloads(tmp_path):
    "tiny_qlora.yaml trains on 4-bit weights (bitsandbytes layers, never a silent full-precision run); a reload predicts the same."
    pytest.importorskip('bitsandbytes', reason='QLoRA needs the bitsandbytes package')
    run = run_pipeline('configs/experiments/tiny_qlora.yaml', [f'output.runs_dir={tmp_path}'], root=ROOT).path
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'completed', md.get('error')
    assert md['device']['quantization'] == '4bit'
    cfg = load_config(run/'config.yaml', root=ROOT)
    choice = find_checkpoint(run)
    dev = read_split(run/'data'/'dev.csv', 'dev')
    (tok, model), (tok2, model2) = load_checkpoint(choice.path, cfg), load_checkpoint(choice.path, cfg)
    assert is_4bit(model) and is_4bit(model2)
    recorded = pd.read_csv(run/'predictions_dev.csv', keep_default_na=False)
    assert predict(model, tok, dev, cfg, progress=False)['summary'].tolist() == recorded['prediction'].tolist()
    x = tok(model_inputs(dev[:2]), return_tensors='pt', padding=True).to(model.device)
    with torch.no_grad(): assert torch.equal(model(**x).logits, model2(**x).logits)


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_fp16_on_cpu_fails_at_validation():
    "Asking for a precision the device lacks is an error, not a silent fallback."
    with pytest.raises(ConfigError, match='training.precision: fp16 mixed precision needs a CUDA GPU'):
        load_config('configs/experiments/smoke.yaml', ['training.precision=fp16'], root=ROOT)


def test_real_recipes_are_valid_configs():
    "The full-size recipes pass the schema (the QLoRA one without the machine check) with the families and settings they need."
    t5, mt5 = (load_config(f'configs/experiments/{n}.yaml', root=ROOT) for n in ('t5', 'mt5'))
    assert (t5.model.family, t5.data.prefix, mt5.model.family) == ('seq2seq', 'summarize: ', 'seq2seq')
    solar = load_config('configs/experiments/solar_qlora.yaml', root=ROOT, check_machine=False)
    assert (solar.model.family, solar.model.quantization, solar.model.chat_template, solar.lora.r) == ('causal', '4bit', True, 16)
    for name in ('tiny_t5', 'tiny_causal', 'tiny_bart_lora', 'tiny_t5_lora', 'tiny_causal_lora'):
        load_config(f'configs/experiments/{name}.yaml', root=ROOT)
