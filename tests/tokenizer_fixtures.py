"""Offline stand-ins for the recipe models: tokenizers with the published special-token layout of each, and tiny models.

Each builder trains a small tokenizer from scratch on `texts` (the `tokenizers` library, or sentencepiece for a
`spiece.model`), writes it with a tiny randomly initialised model (about 1-3 M parameters) into a model folder, and
returns the folder: dialsum loads it exactly as it would load the real model's folder. Nothing here imports dialsum.

| builder  | stands for                                   | what its tokenizer does                                        |
|----------|----------------------------------------------|----------------------------------------------------------------|
| kobart   | digit82/kobart-summarization, gogamza/kobart | PreTrainedTokenizerFast adding no specials; <s>=0 </s>=1 <usr>=2 <pad>=3; BART config eos = decoder start = 1 |
| t5       | paust/pko-t5 (T5 v1.1)                       | sentencepiece spiece.model, `x </s>`; pad = decoder start = 0  |
| mt5      | google/mt5-small                             | the same layout, MT5 config                                    |
| llama    | upstage/SOLAR-10.7B, Llama 2                 | `<s> x` (no </s>), <unk>=0 <s>=1 </s>=2, no pad token          |
| qwen     | Qwen/Qwen2.5                                 | byte-level BPE, no BOS, ChatML template, <|im_end|> ends a turn, eos <|endoftext|> |
"""
import json, re, shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (BartConfig, BartForConditionalGeneration, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          MT5Config, MT5ForConditionalGeneration, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          T5Config, T5ForConditionalGeneration, T5Tokenizer)

TAGS_RE = re.compile(r'#\w+#')
KOBART_SPECIALS = ['<s>', '</s>', '<usr>', '<pad>', '<sys>', '<unk>', '<mask>']  # ids 0..6, as in KoBART's vocabulary
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SIZES = dict(d_model=128, layers=2, heads=4, ffn=256)  # about 1-3 M parameters with a vocabulary of 1-3 k


def _pieces(texts):
    "The training texts cut at the tags (the tokenizer learns the words; the loader adds the tags)."
    return [p for t in texts for p in TAGS_RE.split(t) if p.strip()]


def _fresh(out_dir):
    out_dir = Path(out_dir)
    if out_dir.exists(): shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def _save(model, tok, out_dir, seed=0):
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return Path(out_dir)


def kobart(texts, out_dir, vocab_size=1500, seed=0):
    "KoBART: a sentencepiece-style BPE (Metaspace) as PreTrainedTokenizerFast that adds no special tokens; a BART config."
    out_dir = _fresh(out_dir)
    t = Tokenizer(models.BPE(unk_token='<unk>'))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='always')
    t.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='always')
    t.train_from_iterator(_pieces(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=KOBART_SPECIALS,
                                                              show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token='<s>', eos_token='</s>', unk_token='<unk>', pad_token='<pad>',
                                  mask_token='<mask>')
    torch.manual_seed(seed)
    s = SIZES
    cfg = BartConfig(vocab_size=len(tok), d_model=s['d_model'], encoder_layers=s['layers'], decoder_layers=s['layers'],
                     encoder_attention_heads=s['heads'], decoder_attention_heads=s['heads'], encoder_ffn_dim=s['ffn'],
                     decoder_ffn_dim=s['ffn'], max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=3,
                     decoder_start_token_id=1, forced_eos_token_id=1)
    return _save(BartForConditionalGeneration(cfg), tok, out_dir)


def t5(texts, out_dir, vocab_size=1500, seed=0, mt5=False):
    "pko-t5 (or mT5 with `mt5=True`): a sentencepiece Unigram spiece.model read by T5Tokenizer (`x </s>`), pad = decoder start = 0."
    import sentencepiece as spm
    out_dir = _fresh(out_dir)
    src = out_dir/'texts.txt'
    src.write_text('\n'.join(' '.join(p.split()) for p in _pieces(texts)), encoding='utf-8')
    spm.SentencePieceTrainer.train(input=str(src), model_prefix=str(out_dir/'spiece'), model_type='unigram', vocab_size=vocab_size,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    src.unlink(); (out_dir/'spiece.vocab').unlink()
    tok = T5Tokenizer.from_pretrained(out_dir, extra_ids=0)
    torch.manual_seed(seed)
    s = SIZES
    cfg_cls, cls = (MT5Config, MT5ForConditionalGeneration) if mt5 else (T5Config, T5ForConditionalGeneration)
    cfg = cfg_cls(vocab_size=len(tok), d_model=s['d_model'], d_kv=s['d_model'] // s['heads'], d_ff=s['ffn'], num_layers=s['layers'],
                  num_decoder_layers=s['layers'], num_heads=s['heads'], pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                  feed_forward_proj='gated-gelu', tie_word_embeddings=False)  # T5 v1.1 (pko-t5) and mT5: untied output layer
    return _save(cls(cfg), tok, out_dir)


def mt5(texts, out_dir, vocab_size=1500, seed=0):
    "mT5: T5's layout with the MT5 config (gated GELU, untied output layer)."
    return t5(texts, out_dir, vocab_size, seed, mt5=True)


def llama(texts, out_dir, vocab_size=1500, seed=0):
    "SOLAR / Llama 2: a BPE that puts `<s>` before a text and no `</s>` after it; no pad token."
    out_dir = _fresh(out_dir)
    t = Tokenizer(models.BPE(unk_token='<unk>', byte_fallback=False))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='first')
    t.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='first')
    t.train_from_iterator(_pieces(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<unk>', '<s>', '</s>'],
                                                              show_progress=False))
    t.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token='<s>', eos_token='</s>', unk_token='<unk>')
    torch.manual_seed(seed)
    s = SIZES
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s['d_model'], intermediate_size=s['ffn'], num_hidden_layers=s['layers'],
                      num_attention_heads=s['heads'], num_key_value_heads=s['heads'], max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    return _save(LlamaForCausalLM(cfg), tok, out_dir)


def qwen(texts, out_dir, vocab_size=1500, seed=0):
    "Qwen2.5 (base): byte-level BPE, no BOS, eos `<|endoftext|>`, ChatML chat template whose turns end with `<|im_end|>`."
    out_dir = _fresh(out_dir)
    specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(_pieces(texts), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token='<|endoftext|>', pad_token='<|endoftext|>',
                                  extra_special_tokens=['<|im_start|>', '<|im_end|>'])
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    s = SIZES
    eos = tok.convert_tokens_to_ids('<|endoftext|>')
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=s['d_model'], intermediate_size=s['ffn'], num_hidden_layers=s['layers'],
                      num_attention_heads=s['heads'], num_key_value_heads=s['heads'], max_position_embeddings=512,
                      bos_token_id=None, eos_token_id=eos, pad_token_id=None, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos)  # as Qwen2.5 base: only <|endoftext|>
    return _save(model, tok, out_dir)


BUILDERS = {'kobart': kobart, 't5': t5, 'mt5': mt5, 'llama': llama, 'qwen': qwen}
FAMILY = {'kobart': 'seq2seq', 't5': 'seq2seq', 'mt5': 'seq2seq', 'llama': 'causal', 'qwen': 'causal'}
