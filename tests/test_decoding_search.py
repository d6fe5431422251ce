"`dialsum tune-generation` and `dialsum predict --generation` on a demo run, n-best side files, the issue 14 keys."
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, dialsum, run_folders
from dialsum.config import ConfigError, load_config
from dialsum.runs import RUN_FILES, read_metadata
from dialsum.submissions import read_index

DEMO = ROOT/'configs'/'experiments'/'demo.yaml'
SMOKE = ROOT/'configs'/'experiments'/'smoke.yaml'
GRID = ['num_beams=1,2', 'no_repeat_ngram_size=0,3']  # 4 settings, none of them the run's own (4 beams, no-repeat 2)


@pytest.fixture(scope='session')
def demo_run(tmp_path_factory):
    "A demo run trained for one epoch (75 steps: enough for decoding settings to matter): (run folder, runs folder)."
    runs = tmp_path_factory.mktemp('decoding')/'runs'
    p = dialsum('run', DEMO, 'training.max_steps=75', f'output.runs_dir={runs}', timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    return run_folders(runs)[0], runs


@pytest.fixture(scope='session')
def searched(demo_run):
    "One `tune-generation --apply` of the 4-setting grid on the demo run: (completed process, run folder, runs folder, before)."
    run, runs = demo_run
    before = {k: (run/RUN_FILES[k]).read_bytes() for k in ('submission', 'dev_predictions')}
    before['index'] = (runs/'index.csv').read_bytes()
    p = dialsum('tune-generation', run, '--grid', *GRID, '--apply', timeout=1800)
    return p, run, runs, before


@pytest.mark.slow
def test_search_ranks_settings_and_applies_the_best(searched):
    p, run, runs, before = searched
    assert p.returncode == 0, p.stdout + p.stderr
    print(p.stdout)  # the table the README quotes
    t = pd.read_csv(run/RUN_FILES['generation_search'])
    assert len(t) == 5 and (t['verdict'] == "run's own").sum() == 1  # the 4 of the grid and the run's own setting
    assert t['score'].tolist() == sorted(t['score'], reverse=True) and t['rank'].tolist() == [1, 2, 3, 4, 5]
    assert t['score'].nunique() > 1, 'every setting scored the same: the search could not tell them apart'
    own = t[t['verdict'] == "run's own"].iloc[0]
    assert own['score'] == pytest.approx(read_metadata(run)[0]['dev']['score'], abs=1e-6)  # the run's own, reproduced
    assert ((t['score_lo'] <= t['score']) & (t['score'] <= t['score_hi'])).all()
    assert set(t['verdict']) <= {"run's own", 'better', 'worse', 'within noise'}
    assert (t['verdict'] == 'better').sum() == (t['gain_lo'] > 0).sum()
    assert {'num_beams', 'no_repeat_ngram_size', 'rouge1', 'rouge2', 'rougeL', 'limit_share', 'empty_share'} <= set(t.columns)
    assert (run/RUN_FILES['generation_search_plot']).stat().st_size > 1000
    best = yaml.safe_load((run/RUN_FILES['generation_best']).read_text())
    top = t.iloc[0]
    assert best == ({} if top['verdict'] == "run's own" else
                    {'num_beams': int(top['num_beams']), 'no_repeat_ngram_size': int(top['no_repeat_ngram_size'])})
    assert 'rank' in p.stdout and ('beat the run' in p.stdout or 'beyond noise' in p.stdout)
    for k in ('submission', 'dev_predictions'): assert (run/RUN_FILES[k]).read_bytes() == before[k]  # the run's own files
    assert (runs/'index.csv').read_bytes() == before['index']


@pytest.mark.slow
def test_predict_with_the_best_setting_is_a_new_promoted_run(searched):
    _, run, runs, before = searched
    t = pd.read_csv(run/RUN_FILES['generation_search'])
    p = dialsum('predict', '--run', run, '--generation', 'best', timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    new = next(r for r in run_folders(runs) if r.name.startswith('demo-gen_'))
    md = read_metadata(new)[0]
    assert (md['status'], md['promoted'], md['source_run']) == ('completed', True, run.name)
    assert md['generation_source'].endswith(RUN_FILES['generation_best'])
    assert md['dev']['score'] == pytest.approx(t.iloc[0]['score'], abs=1e-6)  # what the search measured for that setting
    assert (runs/'latest_submission.csv').read_bytes() == (new/RUN_FILES['submission']).read_bytes()
    assert (run/RUN_FILES['submission']).read_bytes() == before['submission']  # never the source run's
    row = read_index(runs).set_index('run_id').loc[new.name]
    assert (row['status'], row['experiment']) == ('completed', 'demo-gen')


@pytest.mark.slow
def test_a_generation_file_and_its_errors(searched, tmp_path):
    _, run, runs, _ = searched
    f = tmp_path/'gen.yaml'
    f.write_text('generation: {num_beams: 0}\n')
    n = len(run_folders(runs))
    p = dialsum('predict', '--run', run, '--generation', f)
    assert p.returncode == 2 and 'generation.num_beams: expected a number of 1 or more (got 0)' in p.stderr, p.stderr
    p = dialsum('predict', '--run', run, '--generation', 'best', '--output', tmp_path/'x.csv')
    assert p.returncode == 2 and 'without --output' in p.stderr, p.stderr
    assert len(run_folders(runs)) == n  # nothing started


def _no_checkpoint(demo_run, tmp_path):
    "A copy of the demo run's record without its checkpoints, in a runs folder of its own."
    run, _ = demo_run
    runs = tmp_path/'runs'
    dst = runs/run.name
    dst.mkdir(parents=True)
    for k in ('config', 'metadata'): shutil.copy(run/RUN_FILES[k], dst/RUN_FILES[k])
    shutil.copytree(run/'data', dst/'data')
    return dst, runs


@pytest.mark.slow
def test_bad_searches_write_nothing(demo_run, tmp_path):
    run, runs = _no_checkpoint(demo_run, tmp_path)
    cases = [(['num_beam=1,2'], "unknown generation key 'generation.num_beam'; did you mean 'generation.num_beams'?"),
             (['repetition_penalty=0,1.2'], 'generation.repetition_penalty: expected a number greater than 0 (got 0)'),
             (['num_beams=2', 'num_return_sequences=3'], 'generation.num_return_sequences (3) is above num_beams (2)'),
             (['batch_size=8,16'], 'not searched'),
             (GRID, f'{run}')]  # no checkpoint: the error names the run
    for grid, says in cases:
        p = dialsum('tune-generation', run, '--grid', *grid, '--apply')
        assert p.returncode == 2 and says in p.stderr, (grid, p.stderr)
    assert 'checkpoint' in p.stderr
    for k in ('generation_search', 'generation_search_plot', 'generation_best'): assert not (run/RUN_FILES[k]).exists()
    p = dialsum('predict', '--run', run, '--generation', 'best')
    assert p.returncode == 2 and 'no generation_best.yaml' in p.stderr and 'tune-generation' in p.stderr, p.stderr
    assert [r.name for r in run_folders(runs)] == [run.name] and not (runs/'latest_submission.csv').exists()


@pytest.mark.slow
def test_nbest_side_files(tmp_path):
    "num_return_sequences 2: nbest_dev.csv and nbest_test.csv hold 2 ranked candidates per row; rank 1 is what was scored and submitted."
    runs = tmp_path/'runs'
    p = dialsum('run', SMOKE, 'generation.num_beams=2', 'generation.num_return_sequences=2', 'training.label_smoothing_factor=0.1',
                'training.max_grad_norm=0.5', f'output.runs_dir={runs}')
    assert p.returncode == 0, p.stdout + p.stderr
    run = run_folders(runs)[0]
    for split, first in (('nbest_dev', pd.read_csv(run/RUN_FILES['dev_predictions'], keep_default_na=False)['prediction']),
                         ('nbest_test', pd.read_csv(run/RUN_FILES['submission'], keep_default_na=False)['summary'])):
        nb = pd.read_csv(run/RUN_FILES[split], keep_default_na=False)
        assert list(nb.columns) == ['fname', 'rank', 'summary']
        assert nb.groupby('fname')['rank'].apply(list).tolist() == [[1, 2]] * len(first)
        assert nb[nb['rank'] == 1]['summary'].tolist() == first.tolist()
    t = yaml.safe_load((run/RUN_FILES['config']).read_text())['training']
    assert (t['label_smoothing_factor'], t['max_grad_norm']) == (0.1, 0.5)


def test_long_recipes_and_position_limits(tmp_path):
    "T5 and mT5 take 1024 encoder tokens (relative positions); a BART-style absolute position table refuses more than it has."
    for name in ('t5_1024', 'mt5_1024'):
        assert load_config(ROOT/'configs'/'experiments'/f'{name}.yaml', root=ROOT, check_machine=False).model.max_source_length == 1024
    with pytest.raises(ConfigError, match=r"max_source_length \(512\) is above the model's max_position_embeddings \(256\)"):
        load_config(DEMO, ['model.max_source_length=512'], root=ROOT)
    from transformers import BartConfig, BartForConditionalGeneration
    from dialsum.config import ModelConfig
    from dialsum.models import ModelError, check_model
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                                   decoder_ffn_dim=16, max_position_embeddings=128))
    with pytest.raises(ModelError, match=r'model.max_source_length \(1024\) is above the model.s max_position_embeddings \(128\)'):
        check_model(ModelConfig(name_or_path='bart', max_source_length=1024), None, bart, 'bart')
