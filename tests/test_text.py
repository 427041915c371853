"""Prompt syntax (A1111 weights, escapes, BREAK), long-prompt chunks, weighted encoding, token
inspection and the `sdlab tokens` command, on the tiny random model's world tokenizer."""

import argparse
import json

import pytest
import torch
from transformers import CLIPTokenizer

from sdlab.cli import tokens as tokens_cli
from sdlab.errors import ConfigError, ModelLoadError
from sdlab.pipeline import Pipeline
from sdlab.text.chunks import (apply_weights, encode_weighted, encode_weighted_batch, pad_to_same_length,
                               prompt_chunks)
from sdlab.text.parse import parse_prompt_attention
from sdlab.text.tokens import (inspect_tokens, position_embeddings, text_embeddings_module, token_embeddings,
                               token_text)

B = ("BREAK", -1.0)
S = 1 / 1.1

PARSE_CASES = [
    ("", [("", 1.0)]),
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("a [small] word", [("a ", 1.0), ("small", S), (" word", 1.0)]),
    ("((a))", [("a", 1.21)]),
    ("[[a]]", [("a", S * S)]),
    ("(a:1.3)", [("a", 1.3)]),
    ("(a: 0.5 )", [("a", 0.5)]),
    ("((a:1.3))", [("a", 1.43)]),
    ("[(a:2)]", [("a", 2 * S)]),
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (r"\(literal\)", [("(literal)", 1.0)]),
    (r"\[x\] (\(y\))", [("[x] ", 1.0), ("(y)", 1.1)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("a [unbalanced", [("a ", 1.0), ("unbalanced", S)]),
    ("a ) b ] c", [("a ) b ] c", 1.0)]),
    ("( [ a ) b ]", [(" ", 1.1), (" a ", 1.0), (" b ", S)]),
    ("(a:x)", [("a:x", 1.1)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
    ("(a:)", [("a:", 1.1)]),
    ("a:1.3) b", [("a:1.3) b", 1.0)]),
    ("[a:1.3]", [("a:1.3", S)]),
    ("(a:-1)", [("a", -1.0)]),
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("BREAK", [B]),
    ("a BREAK BREAK b", [("a", 1.0), B, B, ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), B, ("b", 1.1)]),
    ("a break b BREAKING", [("a break b BREAKING", 1.0)]),
    ("red,BREAK,blue", [("red,", 1.0), B, (",blue", 1.0)]),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-9)


def test_parse_rejects_non_strings():
    with pytest.raises(ConfigError, match="prompt must be a string"):
        parse_prompt_attention(b"a red circle")


# --- chunks ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


@pytest.fixture(scope="module")
def tok(pipe):
    return pipe.c.tokenizer


def words(word, n):
    return " ".join([word] * n)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("n,n_chunks", [(10, 1), (75, 1), (76, 2), (200, 3)])
def test_chunk_counts_and_layout(tok, n, n_chunks):
    red = ids_of(tok, "red")
    assert len(red) == 1  # one token per world word: n words = n tokens
    ids, weights = prompt_chunks(tok, words("red", n))
    assert ids.shape == weights.shape == (n_chunks, 77) and ids.dtype == torch.long
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    for c in range(n_chunks):
        k = min(75, n - 75 * c)  # tokens in this chunk
        assert ids[c].tolist() == [bos] + red * k + [eos] + [pad] * (75 - k)
    assert torch.equal(weights, torch.ones(n_chunks, 77))


def test_short_prompt_ids_match_plain_tokenizer(pipe, tok):
    prompt = "a large red circle, on the left of a blue background"
    ids, _ = prompt_chunks(tok, prompt)
    assert torch.equal(ids, pipe.tokenize([prompt]))


def test_layout_with_a_distinct_pad_token_matches_tokenizer(tiny_model_dir):
    """SD 2.x pads with '!' after the EOS: chunks keep the tokenizer's own layout."""
    tok2 = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer", pad_token="!")
    assert tok2.pad_token_id != tok2.eos_token_id
    ids, _ = prompt_chunks(tok2, "a red circle")
    plain = tok2("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, plain)
    assert ids[0, 4].item() == tok2.eos_token_id and ids[0, 5:].eq(tok2.pad_token_id).all()


def test_break_starts_a_new_padded_chunk(tok):
    ids, _ = prompt_chunks(tok, "a red circle BREAK blue background")
    assert ids.shape == (2, 77)
    assert ids[0, :5].tolist() == [tok.bos_token_id] + ids_of(tok, "a red circle") + [tok.eos_token_id]
    assert ids[1, :4].tolist() == [tok.bos_token_id] + ids_of(tok, "blue background") + [tok.eos_token_id]
    assert ids[0, 5:].eq(tok.pad_token_id).all() and ids[1, 4:].eq(tok.pad_token_id).all()
    assert prompt_chunks(tok, "a red circle BREAK")[0].shape == (1, 77)
    assert prompt_chunks(tok, "BREAK a red circle")[0].shape == (2, 77)  # A1111: leading BREAK = empty chunk
    # 70 tokens then BREAK then 10: the BREAK, not the limit, decides
    assert prompt_chunks(tok, words("red", 70) + " BREAK " + words("blue", 10))[0][1, 1:11].tolist() == \
        ids_of(tok, "blue") * 10


def test_long_chunk_is_cut_after_the_last_comma_in_the_final_20_tokens(tok):
    red, blue, comma = ids_of(tok, "red"), ids_of(tok, "blue"), ids_of(tok, ",")
    prompt = words("red", 70) + ", " + words("blue", 10)  # comma is token 71 of 81
    ids, _ = prompt_chunks(tok, prompt)
    assert ids[0, 1:73].tolist() == red * 70 + comma + [tok.eos_token_id]
    assert ids[1, 1:12].tolist() == blue * 10 + [tok.eos_token_id]
    ids, _ = prompt_chunks(tok, prompt, comma_backtrack=0)  # no backtracking: a hard cut at 75
    assert ids[0, 1:77].tolist() == red * 70 + comma + blue * 4 + [tok.eos_token_id]
    assert ids[1, 1:8].tolist() == blue * 6 + [tok.eos_token_id]
    far = words("red", 40) + ", " + words("blue", 50)  # comma 35 tokens before the cut: ignored
    ids, _ = prompt_chunks(tok, far)
    assert ids[0, 1:77].tolist() == red * 40 + comma + blue * 34 + [tok.eos_token_id]
    assert ids[1, 1:18].tolist() == blue * 16 + [tok.eos_token_id]


def test_weights_sit_on_the_right_token_positions(tok):
    ids, w = prompt_chunks(tok, "a (red:1.5) [circle] on a ((blue)) background")
    assert ids[0, 1:8].tolist() == ids_of(tok, "a red circle on a blue background")
    expected = torch.ones(77)
    expected[2], expected[3], expected[6] = 1.5, S, 1.21
    assert torch.allclose(w[0], expected)
    ids, w = prompt_chunks(tok, "a (xyzzy:2) star")  # an unknown word: several tokens, all weighted
    n = len(ids_of(tok, "xyzzy"))
    assert n > 1 and w[0, 2:2 + n].eq(2).all() and w[0, 2 + n:].eq(1).all() and w[0, :2].eq(1).all()


def test_weight_one_gives_exactly_the_plain_encoder_output(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    prompt = "a large red circle on the left, on a blue background"
    with torch.no_grad():
        out = encode_weighted(te, tok, prompt)
        assert torch.equal(out, pipe.encode_prompt([prompt]))
        assert torch.equal(encode_weighted(te, tok, "a (red:1) circle"), pipe.encode_prompt(["a red circle"]))


def test_upweighting_scales_one_position_then_restores_the_mean(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    with torch.no_grad():
        plain = pipe.encode_prompt(["a red circle"])
        raw = encode_weighted(te, tok, "a (red:2) circle", restore_mean=False)
        restored = encode_weighted(te, tok, "a (red:2) circle")
    changed = (raw != plain).any(dim=-1)[0]
    assert changed.nonzero().flatten().tolist() == [2]  # only the weighted token's position
    assert torch.allclose(raw[0, 2], 2 * plain[0, 2])
    assert restored.mean().item() == pytest.approx(plain.mean().item(), rel=1e-5, abs=1e-7)
    ratio = plain.mean() / raw.mean()
    assert torch.allclose(restored, raw * ratio, atol=1e-6)
    assert abs(ratio.item() - 1) > 1e-4


def test_changing_a_token_changes_only_positions_at_and_after_it(pipe):
    """CLIP's causal mask: a token influences its own and later positions, never earlier ones."""
    with torch.no_grad():
        a = pipe.encode_prompt(["a red circle"])
        b = pipe.encode_prompt(["a blue circle"])
    diff = (a - b).abs().amax(dim=-1)[0]
    assert diff[:2].eq(0).all()
    assert (diff[2:] > 1e-5).all()


def test_long_prompt_encoding_is_each_chunk_encoded_alone(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    prompt = words("red", 100) + " (blue:1.4)"
    with torch.no_grad():
        out = encode_weighted(te, tok, prompt)
        ids, w = prompt_chunks(tok, prompt)
        second = apply_weights(te(ids[1:2]).last_hidden_state, w[1:2])
        first = te(ids[:1]).last_hidden_state
    assert out.shape == (1, 154, 32)
    assert w[1, 26].item() == pytest.approx(1.4) and ids[1, 26].item() == ids_of(tok, "blue")[0]
    assert torch.allclose(out[:, :77], first, atol=1e-6)
    assert torch.allclose(out[:, 77:], second, atol=1e-6)


def test_pad_to_same_length_appends_empty_prompt_chunks(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    with torch.no_grad():
        cond = encode_weighted(te, tok, words("red", 160)).expand(2, -1, -1)
        uncond = encode_weighted(te, tok, "blue").expand(2, -1, -1)
        empty = encode_weighted(te, tok, "")
    c, u = pad_to_same_length(cond, uncond, lambda: empty)
    assert c is cond and u.shape == (2, 231, 32)
    assert torch.equal(u[:, :77], uncond) and torch.equal(u[:, 77:154], empty.expand(2, -1, -1))
    assert torch.equal(u[:, 154:], empty.expand(2, -1, -1))
    u2, c2 = pad_to_same_length(uncond, cond, lambda: empty)  # either side may be the shorter
    assert torch.equal(u2, u) and c2 is cond

    def never():
        raise AssertionError("empty chunk encoded although lengths match")

    assert pad_to_same_length(cond, cond, never)[0] is cond
    with pytest.raises(ConfigError, match="cannot pad"):
        pad_to_same_length(cond, uncond[:, :50], lambda: empty)


def test_encode_weighted_batch_pads_shorter_prompts(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    with torch.no_grad():
        out = encode_weighted_batch(te, tok, ["a red circle", words("red", 80), "a red circle"])
        short = encode_weighted(te, tok, "a red circle")
        empty = encode_weighted(te, tok, "")
    assert out.shape == (3, 154, 32)
    assert torch.equal(out[0, :77], short[0]) and torch.equal(out[0, 77:], empty[0])
    assert torch.equal(out[0], out[2])


@pytest.mark.parametrize("bad", [5, None, ["a red circle"]])
def test_prompt_must_be_a_string(pipe, bad):
    with pytest.raises(ConfigError, match="prompt must be a string"):
        encode_weighted(pipe.c.text_encoder, pipe.c.tokenizer, bad)
    with pytest.raises(ConfigError):
        prompt_chunks(pipe.c.tokenizer, bad)


def test_batch_and_option_errors(pipe):
    with pytest.raises(ConfigError, match="non-empty list"):
        encode_weighted_batch(pipe.c.text_encoder, pipe.c.tokenizer, "a red circle")
    with pytest.raises(ConfigError, match="comma_backtrack"):
        prompt_chunks(pipe.c.tokenizer, "a", comma_backtrack=-1)


# --- token inspection ------------------------------------------------------------------------

def test_inspect_tokens_chunked(tok):
    rows = inspect_tokens(tok, "a (red:1.5) circle")
    assert len(rows) == 77 and [r["position"] for r in rows] == list(range(77))
    assert [r["token"] for r in rows[:5]] == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]
    assert [r["weight"] for r in rows[:5]] == [1.0, 1.0, 1.5, 1.0, 1.0]
    assert rows[0]["bos"] and rows[4]["eos"] and not rows[4]["padding"]
    assert all(r["padding"] and r["id"] == tok.pad_token_id for r in rows[5:])
    assert not any(r["truncated"] for r in rows)
    long_rows = inspect_tokens(tok, words("red", 80))
    assert len(long_rows) == 154 and long_rows[77]["bos"] and long_rows[77]["chunk"] == 1
    assert long_rows[77]["position"] == 77 and sum(r["eos"] for r in long_rows) == 2


def test_inspect_tokens_without_chunks_marks_truncation(pipe, tok):
    rows = inspect_tokens(tok, words("red", 80), chunks=False)
    kept = [r for r in rows if not r["truncated"]]
    cut = [r for r in rows if r["truncated"]]
    assert len(kept) == 77 and len(cut) == 5
    assert all(r["position"] is None and r["token"] == "red" for r in cut)
    assert [r["id"] for r in kept] == pipe.tokenize([words("red", 80)])[0].tolist()
    assert kept[76]["eos"]


def test_inspect_tokens_literal_is_the_plain_tokenization(pipe, tok):
    prompt = "a (red:1.5) circle BREAK"
    rows = inspect_tokens(tok, prompt, literal=True)
    assert [r["id"] for r in rows] == pipe.tokenize([prompt])[0].tolist()
    assert "(" in [r["token"] for r in rows] and all(r["weight"] == 1.0 for r in rows)


def test_token_text_of_byte_pieces(tok):
    ids = ids_of(tok, "ǂ")      # not one token in SD's CLIP vocabulary: two byte pieces
    assert [token_text(tok, i) for i in ids] == [("<0xC7>", False), ("<0x82>", True)]
    assert token_text(tok, ids_of(tok, "circle")[0]) == ("circle", True)


def test_embedding_tables_are_the_encoder_input(pipe):
    te, tok = pipe.c.text_encoder, pipe.c.tokenizer
    ids = pipe.tokenize(["a red circle"])
    seen = {}
    handle = text_embeddings_module(te).register_forward_hook(lambda m, a, out: seen.setdefault("x", out))
    try:
        with torch.no_grad():
            te(ids)
            expected = token_embeddings(te, ids) + position_embeddings(te)[None, :77]
    finally:
        handle.remove()
    assert torch.equal(token_embeddings(te, [5, 7]), te.embeddings.token_embedding.weight[[5, 7]])
    assert position_embeddings(te).shape == (77, 32)
    assert torch.allclose(seen["x"], expected, atol=1e-6)
    with pytest.raises(ConfigError, match="token ids"):
        token_embeddings(te, [len(tok) + 5])
    with pytest.raises(ConfigError, match="no CLIP token"):
        text_embeddings_module(torch.nn.Linear(2, 2))


# --- CLI --------------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    parser = argparse.ArgumentParser(prog="sdlab")
    tokens_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tokens", *map(str, argv)])
    code = args.run(args)
    return code, capsys.readouterr().out


def tok_bos(model_dir):
    return CLIPTokenizer.from_pretrained(model_dir / "tokenizer").bos_token_id


def test_cli_tokens_json(capsys, tiny_model_dir):
    code, out = run_cli(capsys, "a (red:1.5) circle BREAK blue", "--model", tiny_model_dir, "--json")
    d = json.loads(out)
    assert code == 0 and d["chunks"] == 2 and d["tokens"] == 4 and d["max_length"] == 77
    assert [(r["token"], r["weight"]) for r in d["rows"][1:4]] == [("a", 1.0), ("red", 1.5), ("circle", 1.0)]
    assert d["rows"][78]["token"] == "blue" and d["rows"][78]["position"] == 78


def test_cli_tokens_table_and_truncation(capsys, tiny_model_dir):
    code, out = run_cli(capsys, "a ((red)) circle", "--model", tiny_model_dir / "tokenizer")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["position", "id", "token", "weight", "flags"]
    assert lines[1].split() == ["0", str(tok_bos(tiny_model_dir)), "<|startoftext|>", "1", "BOS"]
    assert lines[3].split()[2:] == ["red", "1.21"]
    assert lines[6].split()[0] == "5-76" and lines[6].endswith("PADDING x72")
    assert lines[-1] == "3 prompt tokens in 1 chunk(s) of 77"
    code, out = run_cli(capsys, words("red", 80), "--model", tiny_model_dir, "--no-chunks")
    assert out.splitlines()[-1].endswith("5 truncated (past the 77-token limit)")
    assert sum(line.endswith("TRUNCATED") for line in out.splitlines()) == 5


def test_cli_tokens_bad_model(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        tokens_cli.load_tokenizer(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        tokens_cli.load_tokenizer(tmp_path)
