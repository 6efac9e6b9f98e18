"""CLIP's tokenizer, built offline: its byte vocabulary, and the full 49408-token tokenizer from the shipped merges.

Single checkpoint files carry no tokenizer, so the single-file loader builds CLIP's here; the tiny model's byte-level
tokenizer uses the same byte vocabulary."""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

MERGES = Path(__file__).resolve().parents[1] / "assets" / "configs" / "clip-merges.txt.gz"
MERGE_COUNT = 48894      # BPE merges CLIP's tokenizer uses (its vocabulary is 49408 tokens)


def bytes_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable-character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=1)
def _tokenizer_folder() -> str:
    """vocab.json + merges.txt of CLIP's tokenizer, written once per process from the shipped merges: the
    vocabulary is the 256 byte symbols, the same with '</w>', every merge joined, then the two special tokens."""
    text = gzip.decompress(MERGES.read_bytes()).decode("utf-8")
    merges = text.split("\n")[1:MERGE_COUNT + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = tempfile.mkdtemp(prefix="hypernet-clip-tok-")
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump({t: i for i, t in enumerate(vocab)}, fh, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write(text.split("\n", 1)[0] + "\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer(facts: dict):
    """CLIP's tokenizer (49408 tokens) with one family's special tokens (SD2's OpenCLIP pads with '!')."""
    from transformers import CLIPTokenizer
    folder = _tokenizer_folder()
    kwargs = {k: v for k, v in facts.items() if not k.startswith("_")}
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), **kwargs)
