#!/usr/bin/env python3
"""Differential test of `sagellm tokenize` against Hugging Face `tokenizers`.

Generates thousands of strings with a seeded RNG (Latin, CJK, Cyrillic, Greek, Arabic, Hebrew,
Devanagari, Thai, Hangul, emoji with ZWJ sequences and modifiers, digit runs in several scripts,
whitespace runs with tabs/newlines/CR and Unicode spaces, contractions, text that looks like
special tokens, long words, random code points), encodes them with `$SAGELLM_BINARY tokenize
--jsonl` and with `tokenizers.Tokenizer.encode`, with and without special tokens, and requires
identical ids. Decoding is compared the same way (with and without skip_special_tokens), on the
encoded strings and on random id sequences.

Tokenizers: the Llama-3, Llama-2 and stories260K files from shared/, plus variants of them written
here that exercise components the shipped files do not use (Metaspace, GPT-2 ByteLevel with its
regex and prefix space, other Split behaviors, added-token flags, "a b" merges, <unk> without
byte fallback).

Environment: SAGELLM_BINARY (the sagellm executable), SAGELLM_SHARED_DIR (fixtures; default
../shared beside the checkout).
Exit codes: 0 pass, 1 fail, 77 skip (tokenizers missing and CI != "true").
"""

import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from tokenizers import Tokenizer
except ImportError as e:  # the oracle is optional outside CI
    print(f"oracle not available: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

SEED = 20261125
N_STRINGS = 3000
N_RANDOM_ID_SEQUENCES = 400
MAX_REPORTED = 8

# --- random text -------------------------------------------------------------------------------

LATIN = ["the", "Hello", "world", "naïve", "café", "Äpfel", "straße", "ÉCOLE", "déjà", "vu",
         "Łódź", "İstanbul", "ſtraße", "Kelvin", "mañana", "fjörð", "x", "I", "a", "CamelCase",
         "snake_case", "don", "won", "THE", "tokenizer"]
CYRILLIC = ["нещо", "на", "Български", "Привет", "мир", "ёлка", "ЖУРНАЛ"]
GREEK = ["Καλημέρα", "κόσμε", "λόγος", "ΑΘΗΝΑ"]
ARABIC = ["مرحبا", "بالعالم", "العربية", "كتاب", "\u0627\u0644\u0652\u0643\u0650\u062a\u064e\u0627\u0628"]
HEBREW = ["שלום", "עולם", "עִבְרִית"]
DEVANAGARI = ["नमस्ते", "दुनिया", "हिन्दी", "क्षत्रिय", "प्रेम", "\u0915\u093f\u0924\u093e\u092c"]
THAI = ["สวัสดี", "ภาษาไทย"]
KHMER = ["កាន់តែពិសេសអាចខលចេញ"]
HANGUL = ["안녕하세요", "세계", "\u1100\u1161\u11a8"]  # the last one is conjoining jamo
EMOJI = ["🦙", "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇫🇷", "🇯🇵", "❤\ufe0f",
         "1\ufe0f\u20e3", "👩🏿\u200d🔬", "🧑\u200d🤝\u200d🧑", "\U0001FAE0", "☃", "✅"]
DIGIT_SETS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "①②③", "½¾⅓"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028",
          "\u0085", "\u180e", "\u200b", "\u2009", " \t ", "\n \n", "\v", "\f", "\x1c"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'LL", "’s",
                "don't", "I'm", "we'VE", "o'clock", "''", "'", "''s"]
PUNCT = [".", ",", "!", "?", "...", "—", "–", "-", "(", ")", "[", "]", "{", "}", "\"", "«", "»",
         "“", "”", "::", "->", "=>", "#", "@", "$", "%", "^", "&", "*", "~", "`", "|", "\\", "/",
         "<", ">", "<>", "</", "/>", "©", "®", "™", "°", "§", "¶", "•", "…", "¿", "¡"]
SPECIAL_LOOKALIKES = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|reserved_special_token_5|>", "<|reserved_special_token_250|>",
    "<|python_tag|>", "<|begin_of", "<|eot_id", "|>", "<|", "<|eot_id|", "<<|eot_id|>>",
    "<s>", "</s>", "<unk>", "<s", "</s", "s>", "<<s>>", "<s><s>", "</s></s>", "<S>", "< s>",
    "<0x41>", "<0xFF>", "▁", "▁▁", "Ġ", "Ċ", "\n<s>\n", "<x>", "Ben", " dog",
]
CODE = ["def f(x):\n    return x**2\n", "for (int i = 0; i < n; ++i) {}", "a_b.c->d",
        "https://example.com/a?b=c&d=e", "user@example.org", "0x1F", "1e-10", "3.14159",
        "$HOME/.config", "C:\\Windows\\System32", "<div class=\"x\">", "```py\n```"]


def random_code_point(rng):
    while True:
        if rng.random() < 0.7:
            cp = rng.randrange(0x20, 0x3000)
        elif rng.random() < 0.5:
            cp = rng.randrange(0x3000, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x110000)
        if not 0xD800 <= cp < 0xE000:
            return chr(cp)


def random_cjk(rng):
    n = rng.randrange(1, 8)
    ranges = [(0x4E00, 0x9FFF), (0x3040, 0x309F), (0x30A0, 0x30FF), (0x3400, 0x4DBF),
              (0x20000, 0x2A6DF), (0xAC00, 0xD7A3)]
    lo, hi = rng.choice(ranges)
    return "".join(chr(rng.randrange(lo, hi + 1)) for _ in range(n))


def random_piece(rng):
    kind = rng.random()
    if kind < 0.22:
        return rng.choice(LATIN)
    if kind < 0.30:
        return rng.choice(CYRILLIC + GREEK)
    if kind < 0.38:
        return rng.choice(ARABIC + HEBREW + DEVANAGARI + THAI + KHMER + HANGUL)
    if kind < 0.44:
        return random_cjk(rng)
    if kind < 0.50:
        return rng.choice(EMOJI)
    if kind < 0.57:
        digits = rng.choice(DIGIT_SETS)
        return "".join(rng.choice(digits) for _ in range(rng.randrange(1, 13)))
    if kind < 0.70:
        return rng.choice(SPACES)
    if kind < 0.76:
        return rng.choice(CONTRACTIONS)
    if kind < 0.84:
        return rng.choice(PUNCT)
    if kind < 0.91:
        return rng.choice(SPECIAL_LOOKALIKES)
    if kind < 0.94:
        return rng.choice(CODE)
    if kind < 0.96:
        # Long words: past the per-word cache limit, many merges.
        return rng.choice("abcxyzé文") * rng.randrange(20, 400)
    return "".join(random_code_point(rng) for _ in range(rng.randrange(1, 6)))


def random_text(rng):
    n = rng.choice([1, 1, 2, 3, 5, 8, 13, 30])
    parts = []
    for _ in range(n):
        parts.append(random_piece(rng))
        if rng.random() < 0.5:
            parts.append(" ")
    text = "".join(parts)
    if rng.random() < 0.1:
        text = " " + text
    if rng.random() < 0.1:
        text += rng.choice(SPACES)
    return text


def make_strings(rng):
    fixed = ["", " ", "  ", "\n", "\t", "\r\n", "a", "Hello world", " Hello", "<s>", "</s>",
             "<|begin_of_text|>", "<|begin_of_text|>Hello<|eot_id|>", "hi <s> there</s>",
             "I'm here, aren't you? 1234567 ½", "\u0085\u180e\u00a0x", "’'ſ'S 'K'"]
    strings = fixed + [random_text(rng) for _ in range(N_STRINGS - len(fixed))]
    wiki = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
    lines = wiki.read_text(encoding="utf-8").split("\n")
    strings += rng.sample(lines, 300)
    return strings


# --- tokenizer variants ------------------------------------------------------------------------

def variants(shared, out_dir):
    """(name, path) of every tokenizer.json under test."""
    llama3 = shared / "tokenizers" / "llama3" / "tokenizer.json"
    llama2 = shared / "tokenizers" / "llama2" / "tokenizer.json"
    stories = shared / "models" / "stories260K" / "tokenizer.json"
    result = [("llama3", llama3), ("llama2", llama2), ("stories260K", stories)]

    def write(name, base, change):
        j = json.loads(base.read_text(encoding="utf-8"))
        change(j)
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(j), encoding="utf-8")
        result.append((name, path))

    def metaspace(scheme, split):
        def change(j):
            m = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}
            j["normalizer"] = None
            j["pre_tokenizer"] = m
            j["decoder"] = m
        return change

    write("llama2-metaspace-first", llama2, metaspace("first", False))
    write("stories-metaspace-always-split", stories, metaspace("always", True))

    def gpt2_bytelevel(j):
        j["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                              "use_regex": True}

    write("llama3-gpt2-bytelevel", llama3, gpt2_bytelevel)

    def split_behavior(behavior, invert):
        def change(j):
            j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = behavior
            j["pre_tokenizer"]["pretokenizers"][0]["invert"] = invert
        return change

    write("llama3-split-merged-next", llama3, split_behavior("MergedWithNext", False))
    write("llama3-split-contiguous-inverted", llama3, split_behavior("Contiguous", True))

    def added_flags(j):
        def tok(i, content, single_word, lstrip, rstrip, normalized, special):
            return {"id": i, "content": content, "single_word": single_word, "lstrip": lstrip,
                    "rstrip": rstrip, "normalized": normalized, "special": special}
        j["added_tokens"] += [tok(514, "Ben", True, False, False, False, False),
                              tok(515, "<x>", False, True, True, False, True),
                              tok(516, " dog", False, False, False, True, False),
                              tok(517, "’s", False, True, False, True, False)]

    write("stories-added-token-flags", stories, added_flags)

    def legacy_merges(j):
        j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]

    write("llama2-legacy-merges", llama2, legacy_merges)

    def unknown_tokens(fuse):
        def change(j):
            j["model"]["byte_fallback"] = False
            j["model"]["fuse_unk"] = fuse
        return change

    write("stories-unk-fused", stories, unknown_tokens(True))
    write("stories-unk-unfused", stories, unknown_tokens(False))
    return result


# --- running and comparing ---------------------------------------------------------------------

def run_binary(args):
    proc = subprocess.run([BINARY, "tokenize", *args], capture_output=True, text=True,
                          encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"sagellm tokenize {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip()}")
    # Only "\n" ends a line: the text may hold U+2028, U+0085 and such, which splitlines() cuts at.
    lines = proc.stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [json.loads(line) for line in lines]


def write_jsonl(path, items):
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")


def compare(label, inputs, expected, got, failures):
    if len(expected) != len(got):
        failures.append(f"{label}: {len(got)} results for {len(expected)} inputs")
        return
    bad = [i for i, (e, g) in enumerate(zip(expected, got)) if e != g]
    if bad:
        lines = [f"{label}: {len(bad)} of {len(inputs)} differ"]
        for i in bad[:MAX_REPORTED]:
            lines.append(f"  input    {inputs[i]!r}\n  expected {expected[i]!r}\n  got      {got[i]!r}")
        failures.append("\n".join(lines))


def check_tokenizer(name, path, strings, rng, work, failures):
    hf = Tokenizer.from_file(str(path))
    text_file = work / f"{name}.text.jsonl"
    write_jsonl(text_file, strings)
    encoded = None
    for add_special in (False, True):
        expected = [e.ids for e in hf.encode_batch(strings, add_special_tokens=add_special)]
        args = ["--tokenizer", str(path), "--jsonl", str(text_file)]
        got = run_binary(args + (["--add-special-tokens"] if add_special else []))
        compare(f"{name} encode add_special_tokens={add_special}", strings, expected, got,
                failures)
        if add_special:
            encoded = expected

    # Decode: the encodings above plus random id sequences over the whole vocabulary.
    vocab = hf.get_vocab_size(with_added_tokens=True)
    special = sorted(hf.get_added_tokens_decoder().keys())
    id_lists = list(encoded)
    for _ in range(N_RANDOM_ID_SEQUENCES):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(0, 30))]
        if special and rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        id_lists.append(ids)
    ids_file = work / f"{name}.ids.jsonl"
    write_jsonl(ids_file, id_lists)
    for skip in (False, True):
        expected = hf.decode_batch(id_lists, skip_special_tokens=skip)
        args = ["--tokenizer", str(path), "--decode", "--jsonl", str(ids_file)]
        got = run_binary(args + (["--skip-special-tokens"] if skip else []))
        compare(f"{name} decode skip_special_tokens={skip}", id_lists, expected, got, failures)


def main():
    if not BINARY or not Path(BINARY).exists():
        print(f"SAGELLM_BINARY does not name the sagellm executable: {BINARY!r}")
        return 1
    rng = random.Random(SEED)
    strings = make_strings(rng)
    failures = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="sagellm_tokdiff_") as tmp:
        work = Path(tmp)
        tokenizers = variants(SHARED, work)
        for name, path in tokenizers:
            t0 = time.time()
            before = len(failures)
            check_tokenizer(name, path, strings, rng, work, failures)
            status = "ok" if len(failures) == before else "MISMATCH"
            print(f"{name}: {len(strings)} strings x 2, {status} ({time.time() - t0:.1f} s)")
    if failures:
        print("\n\n".join(failures))
        print(f"FAIL: {len(failures)} comparisons differ")
        return 1
    print(f"PASS: {len(tokenizers)} tokenizers, {len(strings)} strings, "
          f"{time.time() - start:.1f} s")
    return 0


BINARY = os.environ.get("SAGELLM_BINARY", "")
SHARED = Path(os.environ.get("SAGELLM_SHARED_DIR") or
              Path(__file__).resolve().parents[2].parent / "shared")

if __name__ == "__main__":
    sys.exit(main())
