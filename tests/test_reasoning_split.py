"""The streaming think-splitter, stop strings and incremental detokenizer: the split depends only on
the generated text, never on how it was cut into pieces (DeepSeek reasoner semantics), and the
streaming splitter agrees with the one-shot ``nanoseek.tokenizer.split_reasoning``."""

import random

import pytest

from nanoseek.serve.reasoning import ReasoningSplitter, collect
from nanoseek.serve.textstream import ChoiceStream, IncrementalDetokenizer, StopStrings
from nanoseek.tokenizer import split_reasoning, strip_reasoning

MIXED = "<think>\n先算 3+4，得到七。 Check: 3+4=7 ✓\n</think>\n\n答案是 **7** 🎉"
PREFILLED = "\n先想一想：2×3=6 </think>  答：六 "
ZERO = " 计算 2+2 </think> <answer> 4（四） </answer>"


def run(pieces, **kw):
    sp = ReasoningSplitter(**kw)
    deltas = []
    for p in pieces:
        deltas += sp.feed(p)
    deltas += sp.finish()
    return collect(deltas), deltas


def all_cuts(text):
    """Every 2-way split, and the 1-character split."""
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)


@pytest.mark.parametrize("text,kw,expected", [
    (MIXED, {}, ("先算 3+4，得到七。 Check: 3+4=7 ✓", "答案是 **7** 🎉")),
    (PREFILLED, {"think_prefilled": True}, ("先想一想：2×3=6", "答：六")),
    (ZERO, {"think_prefilled": True, "answer_tags": True}, ("计算 2+2", "4（四）")),
    ("plain answer, no block", {}, (None, "plain answer, no block")),
    ("<thin", {}, (None, "<thin")),
    ("cut off while still thin", {"think_prefilled": True}, ("cut off while still thin", None)),
    ("cut off at </thi", {"think_prefilled": True}, ("cut off at </thi", None)),
    ("<think></think>only answer", {}, (None, "only answer")),
    ("r</think>a</think>b", {"think_prefilled": True}, ("r", "a</think>b")),
    ("r</think> no tags here", {"think_prefilled": True, "answer_tags": True}, ("r", "no tags here")),
    ("r</think>x <answer>5</answer> trailing", {"think_prefilled": True, "answer_tags": True}, ("r", "5")),
    ("r</think><answer>5</ans", {"think_prefilled": True, "answer_tags": True}, ("r", "5</ans")),
])
def test_split_is_invariant_to_chunking(text, kw, expected):
    assert split_reasoning(text, **kw) == expected
    for pieces in all_cuts(text):
        got, deltas = run(pieces, **kw)
        assert got == expected, pieces
        # tags never leak into either field, and no empty deltas are produced
        assert all(d.text and "<think>" not in d.text for d in deltas)


@pytest.mark.parametrize("think_prefilled,answer_tags", [(False, False), (True, False), (False, True), (True, True)])
def test_streaming_splitter_agrees_with_one_shot_split(think_prefilled, answer_tags):
    """Random texts made of tags, tag fragments, words and whitespace, cut at random places."""
    parts = ["<think>", "</think>", "<answer>", "</answer>", "<th", "</thi", "</ans", "<", ">", " ", "\n",
             "x", "答", "3+4"]
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(1, len(text)), min(3, max(0, len(text) - 1)))) if len(text) > 1 else []
        pieces = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        kw = {"think_prefilled": think_prefilled, "answer_tags": answer_tags}
        assert run(pieces, **kw)[0] == split_reasoning(text, **kw), (text, pieces)


def test_reasoning_deltas_come_before_content_and_cross_boundary_is_two_deltas():
    sp = ReasoningSplitter(think_prefilled=True)
    out = sp.feed("abc</think>def")
    assert [(d.kind, d.text) for d in out] == [("reasoning", "abc"), ("content", "def")]
    sp = ReasoningSplitter(think_prefilled=True)
    kinds = [d.kind for p in "xy</think>z w" for d in sp.feed(p)] + [d.kind for d in sp.finish()]
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning")


def test_close_tag_cut_in_middle_is_held_back():
    sp = ReasoningSplitter(think_prefilled=True)
    assert [d.text for d in sp.feed("think </th")] == ["think"]
    assert [(d.kind, d.text) for d in sp.feed("ink>ans")] == [("content", "ans")]


def test_strip_reasoning_of_earlier_turns():
    assert strip_reasoning("<think>old </think> reasoning</think> answer ") == "answer"
    assert strip_reasoning("just an answer") == "just an answer"


# ------------------------------------------------------------------------- stop strings
@pytest.mark.parametrize("text,stops,expected", [
    ("hello world END more", ["END"], ("hello world ", True)),
    ("abcdef", ["cde", "d"], ("abc", True)),  # "d" completes first
    ("abcdef", ["bcd", "cd"], ("a", True)),  # both end at 'd': the longer one wins
    ("no stop here", ["zzz"], ("no stop here", False)),
    ("中文停止符号", ["停止"], ("中文", True)),
])
def test_stop_strings_invariant(text, stops, expected):
    for pieces in all_cuts(text):
        s = StopStrings(stops)
        out, stopped = "", False
        for p in pieces:
            t, stopped = s.feed(p)
            out += t
            if stopped:
                break
        out += s.flush()
        assert (out, stopped) == expected, pieces


# ------------------------------------------------------------------------- detokenizer
def byte_decode(ids):
    """A byte-level 'tokenizer': token id = byte value."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_never_emits_half_characters():
    text = "思考：café 🎉 ok"
    d = IncrementalDetokenizer(byte_decode)
    pieces = [d.push(b) for b in text.encode()] + [d.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_choice_stream_over_every_byte_grouping():
    """Tokens that cut multi-byte characters and the tags anywhere: same fields every time."""
    raw = MIXED.encode()
    expected = split_reasoning(MIXED)

    def stream(groups):
        table = {i: g for i, g in enumerate(groups)}
        cs = ChoiceStream(lambda ids: b"".join(table[i] for i in ids).decode("utf-8", "replace"),
                          stop_ids=[], max_tokens=10_000)
        deltas = []
        for i in range(len(groups)):
            deltas += cs.push(i)
        deltas += cs.finish("stop")
        return collect(deltas), cs

    for i in range(1, len(raw)):
        assert stream([raw[:i], raw[i:]])[0] == expected, i
    got, cs = stream([bytes([b]) for b in raw])
    assert got == expected
    # reasoning tokens: every byte up to and including the one that completes "</think>"
    assert cs.reasoning_tokens == len(raw[:raw.index(b"</think>") + len(b"</think>")])


def test_choice_stream_length_and_stop_ids():
    table = {1: b"a", 2: b"<", 3: b"/think>", 9: b""}
    dec = lambda ids: b"".join(table[i] for i in ids).decode()  # noqa: E731
    cs = ChoiceStream(dec, stop_ids=[9], max_tokens=3, think_prefilled=True)
    out = cs.push(1) + cs.push(1) + cs.push(2)
    assert cs.finish_reason == "length" and collect(out) == ("aa<", None)
    cs = ChoiceStream(dec, stop_ids=[9], max_tokens=10, think_prefilled=True)
    out = cs.push(1) + cs.push(2) + cs.push(3) + cs.push(1) + cs.push(9)
    assert cs.finish_reason == "stop" and collect(out) == ("a", "a") and cs.tokens == 5 and cs.reasoning_tokens == 3
