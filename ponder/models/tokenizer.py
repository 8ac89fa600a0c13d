"""The built-in tiny model's tokenizer: one token per character, plus specials.

Built with the `tokenizers` library and saved as a standard `tokenizer.json`,
so `transformers.AutoTokenizer.from_pretrained(folder)` reads it. One token
per character keeps every digit its own token, which is what lets a model of
a million parameters learn column arithmetic.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIALS = [PAD, BOS, EOS, THINK_OPEN, THINK_CLOSE]
CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # digits, letters, punctuation, space, newline


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Every character is its own pre-token (newlines too, which "." would miss); the
    # WordLevel vocab then maps it to an id.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([PAD, BOS, EOS])
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])  # not "special": decoding keeps them in the text
    # Encoding with special tokens prepends <bos>, as for most HF base models.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, clean_up_tokenization_spaces=False,
    )
