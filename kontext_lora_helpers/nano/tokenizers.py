"""Tokenizers for nano Kontext, built from code so that nothing is downloaded.

FLUX reads a prompt twice: CLIP-L gives one pooled vector (77 tokens in), T5-XXL gives a sequence of
hidden states. Nano keeps both paths with the real tokenizer classes (`CLIPTokenizer`,
`T5TokenizerFast`) but tiny vocabularies made here, deterministically:

* CLIP: byte-level BPE with the 256 byte symbols, their end-of-word forms and no merges, so every
  prompt is spelled out character by character (the real CLIP has 49,408 tokens after 48,894 merges).
* T5: a unigram model over a short English word list used by the course's prompts, plus single
  characters so any text still tokenizes (the real T5 has 32,100 sentencepiece pieces).

Same inputs give the same token ids on every machine: the vocabularies are fixed lists in this file.
"""

from __future__ import annotations

from transformers import CLIPTokenizer, T5TokenizerFast

# Nano reads at most this many T5 tokens; `FluxKontextPipeline` pads prompts to `max_sequence_length`
# (512 by default, as FLUX-dev was trained). Nano was trained at 32, and its `tokenizer_2` says so
# through `model_max_length`; the course's helpers pass that value to the pipeline.
NANO_MAX_SEQUENCE_LENGTH = 32
CLIP_MAX_LENGTH = 77

# Words that the course's prompts use; whole-word pieces make the T5 path see words, not letters.
_WORDS = """
a an the this that these those of to in on at for with without and or but not no is are be it its
image photo photograph picture scene colour color colors colours black white gray grey red green
blue yellow bright brighter dark darker light lighter flip flipped mirror horizontally vertically
upside down left right top bottom turn rotate make keep leave unchanged same as is original copy
restore restored restoration degraded degradation high fidelity quality clean sharp sharper remove
fix repair undo reduce noise noisy blur blurry blurred jpeg artifacts artefacts compression
downsampling downsampled resolution low upscale scratches scratch dust faded fading cast grain film
old vintage heavy strong mild slight moderate x 2x 3x 4x 8x please just do nothing change edit
convert grayscale monochrome invert negative contrast saturation warm cool tint sepia detail details
texture face portrait cat coffee cup flower temple sky night day from by into over under more less
very much all every
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, as CLIP's byte-level BPE uses it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def build_clip_tokenizer() -> CLIPTokenizer:
    """A character-level `CLIPTokenizer` (514 tokens) padded to 77 like CLIP-L."""
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def build_t5_tokenizer(max_length: int = NANO_MAX_SEQUENCE_LENGTH) -> T5TokenizerFast:
    """A word-level unigram `T5TokenizerFast` with character fallback; `model_max_length` = 32 for
    nano (`max_length`: 512 for the random twins of FLUX.1 Kontext, `random_kontext`).

    Both spellings of a known word are pieces (``photo`` and ``Photo``), as prompts start with capitals.
    """
    # T5's layout: <pad>=0, </s>=1, <unk>=2, then pieces. Whole words score higher than the
    # characters that spell them, so the unigram model prefers one piece per known word.
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for word in dict.fromkeys(_WORDS):
        for piece in ("▁" + word, "▁" + word.capitalize()):
            if piece not in seen:
                pieces.append((piece, -3.0))
                seen.add(piece)
    characters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-—()/%&+=#@*_"
    for char in characters:
        for piece in (char, "▁" + char):
            if piece not in seen:
                pieces.append((piece, -12.0))
                seen.add(piece)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
