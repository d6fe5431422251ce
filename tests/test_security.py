"""Security: configs cannot run code, weights load without pickle, remote code stays off, names stay inside
runs/, and secrets never reach a run record, a log, an executed notebook or the index."""
import inspect, json, os, pickle, re, shutil
from pathlib import Path

import pytest

from casebook import prior_runs, record, snapshot
from conftest import ROOT, dialsum, run_folders
from dialsum.config import Config, ConfigError, DialsumError, ModelConfig, ScratchModel, load_config, read_yaml, validate

SMOKE = ROOT/'configs'/'experiments'/'smoke.yaml'
PACKAGE = ROOT/'dialsum'
HF = 'hf_SecretTokenValue0123456789abcd'
WANDB = '5ecret0wandb0key0000000000000000000000ff'


# ---------------------------------------------------------------------------------------------- configs are data

TAGS = [
    ('apply', '!!python/object/apply:os.system ["touch {m}"]'),
    ('new', '!!python/object/new:subprocess.Popen [["touch", "{m}"]]'),
    ('name', '!!python/name:os.system'),
    ('module', '!!python/module:os'),
]


@pytest.mark.parametrize('kind,tag', TAGS, ids=[t[0] for t in TAGS])
def test_yaml_tags_cannot_run_code(kind, tag, tmp_path):
    "`yaml.safe_load` only: a Python tag in a config is an error and the code it names never runs."
    marker = tmp_path/'pwned'
    p = tmp_path/'evil.yaml'
    p.write_text(f"base: {SMOKE}\nexperiment: e\ntraining:\n  seed: {tag.format(m=marker)}\n")
    with pytest.raises(ConfigError) as e: load_config(p, root=ROOT)
    assert 'evil.yaml: not valid YAML (tags that build Python objects are refused)' in str(e.value)
    assert not marker.exists()
    record(f'sec-yaml-python-{kind}', 'Security', f'a config with {tag.split()[0]}', 'refused', 'ConfigError, nothing ran',
           str(e.value).splitlines()[0], tmp_path)


def test_yaml_tag_in_an_override_cannot_run_code(tmp_path):
    marker = tmp_path/'pwned'
    p = dialsum('run', SMOKE, f'output.runs_dir={tmp_path/"runs"}', f'experiment=!!python/object/apply:os.system ["touch {marker}"]', timeout=120)
    assert p.returncode == 2 and 'experiment' in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert not marker.exists() and not (tmp_path/'runs').exists()
    record('sec-yaml-python-override', 'Security', 'an override experiment=!!python/object/apply:os.system [...]', 'refused',
           'exit 2, nothing ran', p.stderr.removeprefix('error: '), tmp_path)


def _calls(pattern):
    "Lines of the package's modules that match `pattern`, as 'file:line: text'."
    rx = re.compile(pattern)
    return [f"{f.name}:{i}: {l.strip()}" for f in sorted(PACKAGE.glob('*.py')) if f.name != '_modidx.py'
            for i, l in enumerate(f.read_text(encoding='utf-8').splitlines(), 1) if rx.search(l)]


def test_package_uses_only_safe_loaders():
    "No unsafe YAML loader, no bare pickle, every torch.load with weights_only=True, remote code never switched on in code."
    assert _calls(r'yaml\.(load|unsafe_load|full_load|load_all)\(|Loader\s*=') == []
    assert _calls(r'\b(pickle|dill|joblib|cloudpickle)\.loads?\(') == []
    assert [l for l in _calls(r'\btorch\.load\(') if 'weights_only=True' not in l] == []
    assert _calls(r'trust_remote_code\s*=\s*True|allow_pickle\s*=\s*True') == []
    assert _calls(r'(?<![.\w])(eval|exec)\(') == []
    assert len(_calls(r'\bload_yaml\(')) >= 3  # the grep looks at the real modules: configs and overrides are read by load_yaml,
    import yaml                                   # which drives ConfigLoader, a yaml.SafeLoader
    from dialsum.config import ConfigLoader
    assert issubclass(ConfigLoader, yaml.SafeLoader) and _calls(r'ConfigLoader\(text\)')
    from dialsum.models import load_pretrained
    assert inspect.signature(load_pretrained).parameters['trust_remote_code'].default is False
    assert inspect.signature(load_pretrained).parameters['allow_pickle'].default is False
    m = ModelConfig(name_or_path='x')
    assert (m.trust_remote_code, m.allow_pickle) == (False, False)
    record('sec-safe-loaders', 'Security', 'grep of dialsum/*.py', 'only safe loaders', 'passed',
           'YAML read only by a yaml.SafeLoader (dialsum.config.ConfigLoader); no pickle.load; torch.load only with weights_only=True; trust_remote_code and allow_pickle default False')


# ---------------------------------------------------------------------------------------------- weights and remote code

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from dialsum.models import build_scratch_model
    texts = ['#Person1#: 안녕하세요.\n#Person2#: 네, 반가워요.', '#Person1#이 인사한다.'] * 10
    spec = ScratchModel(vocab_size=300, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=16,
                        max_position_embeddings=64)
    return build_scratch_model(texts, spec, tmp_path_factory.mktemp('tiny')/'model')


class _Evil:
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def test_pickle_weights(tiny, tmp_path):
    "Pickle-only weights are refused unless model.allow_pickle; allowed, plain tensors load, and a pickle holding code still does not run."
    import torch
    from safetensors.torch import load_file
    from dialsum.models import ModelError, load_pretrained
    ok = tmp_path/'ok'; shutil.copytree(tiny, ok, ignore=shutil.ignore_patterns('model.safetensors'))
    torch.save(load_file(str(tiny/'model.safetensors')), ok/'pytorch_model.bin')
    with pytest.raises(ModelError) as e: load_pretrained(str(ok))
    assert 'only pickle weights' in str(e.value) and 'model.allow_pickle: true' in str(e.value)
    tok, model = load_pretrained(str(ok), allow_pickle=True)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    marker = tmp_path/'pwned'
    evil = tmp_path/'evil'; shutil.copytree(ok, evil); (evil/'pytorch_model.bin').write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelError) as e2: load_pretrained(str(evil), allow_pickle=True)
    assert 'torch.load(weights_only=True) refuses' in str(e2.value) and not marker.exists()
    record('sec-pickle-weights', 'Security', 'a model folder with only pytorch_model.bin; then one whose pickle would run a command',
           'refused unless allowed; code never runs', 'ModelError', f"{e.value} | with allow_pickle: {e2.value}", tmp_path)


def test_remote_code_is_off(tiny, tmp_path):
    from dialsum.models import ModelError, load_pretrained
    d = tmp_path/'remote'; shutil.copytree(tiny, d)
    cfg = json.loads((d/'config.json').read_text())
    cfg.update(model_type='custom_sum', auto_map={'AutoConfig': 'evil.EvilConfig', 'AutoModelForSeq2SeqLM': 'evil.EvilModel'})
    (d/'config.json').write_text(json.dumps(cfg))
    (d/'evil.py').write_text(f"open({str(tmp_path/'ran')!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError) as e: load_pretrained(str(d))
    assert 'model.trust_remote_code: true' in str(e.value) and not (tmp_path/'ran').exists()
    record('sec-remote-code-off', 'Security', 'a model folder whose config.json points at its own Python code', 'refused',
           'ModelError, the code never ran', str(e.value), tmp_path)


def test_run_record_says_whether_remote_code_was_trusted(tmp_path):
    from dialsum.runs import start_run
    for model, generation in ((False, False), (True, False), (False, True)):
        cfg = validate({'experiment': 'x', 'model': {'name_or_path': 'm', 'trust_remote_code': model},
                        'generation': {'trust_remote_code': generation}, 'output': {'runs_dir': str(tmp_path/'runs')}})
        assert start_run(cfg, tmp_path).metadata['trust_remote_code'] is (model or generation)


# ---------------------------------------------------------------------------------------------- names stay inside runs/

BAD_NAMES = ['../escape', '..', '/etc/passwd', 'a/b', 'a\\b', '.hidden', '', 'x' * 200, 'a\x00b', '~/x', 'a b']


@pytest.mark.parametrize('name', BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_experiment_names_cannot_leave_runs(name, tmp_path):
    from dialsum.runs import new_run_dir, safe_name
    runs = tmp_path/'a'/'runs'
    with pytest.raises(DialsumError): validate({'experiment': name, 'model': {'name_or_path': 'm'}})
    with pytest.raises(ConfigError): safe_name(name)
    with pytest.raises(ConfigError): new_run_dir(runs, name)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob('*')) in ([], ['a', 'a/runs'])


RESUME_NAMES = [('dotdot', '../../etc', "no '..'"), ('absolute', '/etc', 'not inside the runs folder'),
                 ('inside-then-out', 'old_20260101-000000/../..', "no '..'"), ('unknown', 'nope_20990101-000000', 'no run folder')]


@pytest.mark.parametrize('cid,name,words', RESUME_NAMES, ids=[c[0] for c in RESUME_NAMES])
def test_resume_names_cannot_leave_runs(cid, name, words, tmp_path):
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', '--resume', name, timeout=120)
    assert p.returncode == 2 and words in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert snapshot(runs) == before
    record(f'sec-resume-name-{cid}', 'Security', f'dialsum run --resume {name!r}', 'refused', 'exit 2',
           p.stderr.removeprefix('error: '), tmp_path)


def test_resume_needs_a_run_of_the_same_experiment(tmp_path):
    runs = prior_runs(tmp_path/'runs')
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', '--resume', 'old_20260101-000000', timeout=120)
    assert p.returncode == 2 and "is a run of experiment 'old', not 'smoke'" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------- secrets

def _secret_env():
    return dict(os.environ, HF_TOKEN=HF, WANDB_API_KEY=WANDB, HF_HUB_OFFLINE='1')


def _leaks(folder, *texts):
    "Files under `folder` (and texts) that contain a secret value."
    secrets = [HF.encode(), WANDB.encode(), b'hf_SecretToken']
    bad = [str(p) for p in Path(folder).rglob('*') if p.is_file() and any(s in p.read_bytes() for s in secrets)]
    return bad + [t[:200] for t in texts if any(s.decode() in t for s in secrets)]


def _run_cli(*args, env, cwd=ROOT):
    import subprocess
    from conftest import BIN
    return subprocess.run([str(BIN/'dialsum'), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


SECRET_OVERRIDES = [('token-in-a-value', f'data.prefix={HF}', 'data.prefix: holds what looks like a secret'),
                    ('token-under-a-secret-key', f'model.hub_token={HF}', "unknown key 'model.hub_token'"),
                    ('env-secret-in-a-value', f'data.prefix=key {WANDB}', 'data.prefix: holds what looks like a secret')]


@pytest.mark.parametrize('cid,override,words', SECRET_OVERRIDES, ids=[c[0] for c in SECRET_OVERRIDES])
def test_a_secret_in_an_override_is_refused_unseen(cid, override, words, tmp_path):
    "A config or override that holds a secret is refused before anything is written, and the message leaves the value out."
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = _run_cli('run', SMOKE, f'output.runs_dir={runs}', override, env=_secret_env())
    assert p.returncode == 2 and words in p.stderr, p.stderr
    assert _leaks(runs, p.stdout, p.stderr) == [] and snapshot(runs) == before
    given = f"dialsum run ... {override.replace(HF, '<HF_TOKEN value>').replace(WANDB, '<WANDB_API_KEY value>')}"
    record(f'sec-secret-override-{cid}', 'Security', given, 'refused', 'exit 2, value not shown', p.stderr.removeprefix('error: '), tmp_path)


def test_secrets_in_the_environment_never_reach_a_completed_run(tmp_path):
    "HF_TOKEN and WANDB_API_KEY set for a whole run: no file of the run folder, the index, history or the output holds them."
    runs = tmp_path/'runs'
    p = _run_cli('run', SMOKE, f'output.runs_dir={runs}', env=_secret_env())
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = run_folders(runs)
    nb = json.loads((run/'run.ipynb').read_text())
    assert nb['metadata']['papermill']['parameters']['overrides'] == [f'output.runs_dir={runs}']  # the parameters were recorded
    assert _leaks(runs, p.stdout, p.stderr) == []
    md = json.loads((run/'metadata.json').read_text())
    assert md['trust_remote_code'] is False
    from dialsum.checkpoints import checkpoint_bytes, checkpoints_on_disk
    from dialsum.config import load_config
    cfg = load_config(run/'config.yaml', root=ROOT)
    dc = md['disk_check']
    assert dc['checkpoint_bytes'] == checkpoint_bytes(md['parameters']['total'], md['parameters']['trainable'], cfg.training.optim)
    assert dc['needed_bytes'] == dc['checkpoint_bytes'] * checkpoints_on_disk(cfg.training, 48) and dc['free_bytes'] > dc['needed_bytes']
    record('sec-secrets-in-env-completed', 'Security', 'HF_TOKEN and WANDB_API_KEY in the environment of a whole dialsum run',
           'never written', 'not found', f"{sum(1 for _ in runs.rglob('*') if _.is_file())} files searched (run folder, index, "
           "history, latest submission, executed notebook with its papermill parameters, log) and the command's output; "
           "metadata records trust_remote_code: false and the disk check's numbers")


def test_a_secret_echoed_by_an_error_is_scrubbed(tmp_path):
    "A data file holding the token: its error is echoed in the traceback, the log and the record, and scrubbed from all of them."
    runs, data = tmp_path/'runs', tmp_path/'data'; data.mkdir()
    (data/'train.csv').write_text(f'fname,dialogue,summary\n{HF},#Person1#: 네,요약\n{HF},#Person1#: 네,요약\n', encoding='utf-8')
    (data/'dev.csv').write_text('fname,dialogue,summary\ndev_0,#Person1#: 네,요약\n', encoding='utf-8')
    (data/'test.csv').write_text('fname,dialogue\ntest_0,#Person1#: 네\n', encoding='utf-8')
    p = _run_cli('run', SMOKE, f'output.runs_dir={runs}', 'data.demo=null', f'data.train={data/"train.csv"}',
                 f'data.dev={data/"dev.csv"}', f'data.test={data/"test.csv"}', env=_secret_env())
    assert p.returncode == 1, p.stdout + p.stderr
    (run,) = run_folders(runs)
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and "duplicated fname '[redacted]' at rows 1, 2" in md['error'], md['error']
    nb = (run/'run.ipynb').read_text()
    assert 'DataError' in nb and '[redacted]' in nb  # the traceback is there, without the token
    assert _leaks(runs, p.stdout, p.stderr) == []
    record('sec-secret-echoed-by-an-error', 'Security', 'a train.csv whose fname is the HF_TOKEN value (echoed by the DataError)',
           'scrubbed', 'exit 1, not found', md['error'], tmp_path)


SECRET_NAMES = ['S3_KEY', 'MY_KEY', 'GITHUB_PAT', 'DEPLOY_SECRET', 'SLACK_TOKEN', 'DB_PASSWORD', 'SMTPPASSWD', 'awsKey']
NOT_SECRET_NAMES = ['KEYBOARD', 'MONKEY', 'KEY_PATH', 'PATH', 'PATTERN', 'section.key', 'sort_keys', 'pad_token', 'max_new_tokens']


def test_secret_names_and_short_values_are_scrubbed(tmp_path):
    "Any *_KEY, *_PAT, *_SECRET, *_TOKEN or *PASSWORD* variable is a secret, and its value is scrubbed from a log even when short."
    from dialsum.redaction import REDACTED, is_secret_name, redact, scrub_file
    assert [n for n in SECRET_NAMES if not is_secret_name(n)] == []
    assert [n for n in NOT_SECRET_NAMES if is_secret_name(n)] == []
    env = {'S3_KEY': 'k3y-42', 'GITHUB_PAT': 'pat9x', 'MY_TOKEN': 'abc', 'SOME_KEY': 'true', 'KEYBOARD': 'qwerty12'}
    log = tmp_path/'run.log'
    log.write_text('uploading with k3y-42\n{"pat": "pat9x", "steps": 42}\nabc is too short to look for; qwerty12 is no secret\n')
    assert scrub_file(log, env)
    text = log.read_text()
    assert 'k3y-42' not in text and 'pat9x' not in text and text.count(REDACTED) == 2, text
    assert json.loads(text.splitlines()[1]) == {'pat': REDACTED, 'steps': 42}  # JSON stays JSON
    assert 'abc is too short' in text and 'qwerty12' in text
    assert redact('the value k3y-42x is another word', env) == 'the value k3y-42x is another word'
    record('sec-short-secret-values', 'Security', 'S3_KEY and GITHUB_PAT with 5- and 6-character values, echoed into a log',
           'scrubbed', 'not found', 'names ending in _KEY, _PAT, _SECRET, _TOKEN or holding PASSWORD/PASSWD are secrets; '
           'their values of 4 characters or more are removed where they stand alone', tmp_path)


@pytest.mark.slow
def test_resume_refuses_a_malicious_optimizer_state(tmp_path):
    "--resume from a checkpoint whose optimizer.pt would run a command: refused naming the file, no weights_only=False advice, nothing ran."
    runs, marker = tmp_path/'runs', tmp_path/'pwned'
    over = [f'output.runs_dir={runs}', 'training.save_total_limit=null', 'training.early_stopping_patience=null']
    p = dialsum('run', SMOKE, *over)
    assert p.returncode in (0, 1), p.stderr[-3000:]  # 1 only when the tiny model's submission is not valid
    (run,) = run_folders(runs)
    evil = run/'checkpoints'/'checkpoint-8'/'optimizer.pt'
    evil.write_bytes(pickle.dumps(_Evil(marker)))
    before = snapshot(run/'checkpoints')
    q = dialsum('run', SMOKE, *over, 'training.max_steps=12', '--resume', run.name)
    md = json.loads((run/'metadata.json').read_text())
    assert q.returncode == 1 and md['status'] == 'failed', q.stderr[-3000:]
    assert md['error'].startswith(f'CheckpointError: {evil}: refused') and 'tampered with' in md['error'], md['error']
    for text in (md['error'], q.stderr, ' '.join(md['error_tail'])): assert 'weights_only=False' not in text, text
    assert not marker.exists(), 'the pickle ran'
    assert snapshot(run/'checkpoints') == before, 'a checkpoint changed'
    record('sec-resume-evil-optimizer', 'Security', 'dialsum run --resume RUN whose newest checkpoint has an optimizer.pt that would run a command',
           'refused naming the file', 'exit 1, failed record, nothing ran', md['error'], tmp_path)
