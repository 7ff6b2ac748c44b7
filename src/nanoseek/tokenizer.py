"""The tokenizer and chat template of nanoseek's own models.

A byte-level tokenizer built with Hugging Face ``tokenizers`` (every byte is one token, so any text
round-trips) plus single tokens for the special and reasoning tags. It is saved as a normal
Hugging Face tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json`` with the chat
template), so ``transformers.AutoTokenizer.from_pretrained`` loads a nanoseek checkpoint unchanged.

The chat template is the R1-Zero template (DeepSeek-R1 paper v1, Table 1) in a compact form: the
user turn is followed by ``Assistant: <think>`` so that the completion continues the reasoning,
closes it with ``</think>`` and gives the answer in ``<answer>…</answer>``. The long R1-Zero
system sentence is optional (``system`` message); the CPU recipe leaves it out to keep prompts
short.

``split_reasoning`` is the one think/answer split of a finished generation into the DeepSeek API's
``reasoning_content`` and ``content`` (``nanoseek.serve.reasoning.ReasoningSplitter`` applies the
same rules to a stream); ``strip_reasoning`` is an earlier assistant turn as it goes back into a
prompt.
"""

from __future__ import annotations

from pathlib import Path

from nanoseek.errors import NanoseekError

EOS = "<|end|>"
PAD = "<|pad|>"
BOS = "<|begin|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
SPECIAL_TOKENS = [PAD, BOS, EOS]
TAG_TOKENS = [THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE]

# Jinja chat template (the format transformers' apply_chat_template reads). Earlier assistant turns
# keep only their answer part: reasoning from earlier turns is dropped, as the DeepSeek API does.
R1_ZERO_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}"
    "{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
    "Assistant: <think></think>{{ c | trim }}" + EOS + "\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: <think>{% endif %}"
)


def build_tokenizer():
    """Build the byte-level nanoseek tokenizer as a ``transformers.PreTrainedTokenizerFast``.

    Vocabulary: ids 0..2 are ``<|pad|>``, ``<|begin|>``, ``<|end|>``; 3..6 the tags
    ``<think> </think> <answer> </answer>``; then the 256 byte symbols. Size 263.
    """
    # tokenizers/transformers load here and in load_tokenizer only: the tags, the template and the
    # split in this ground-floor module are used without them (~1 s of import on a CPU)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TAG_TOKENS)}
    for sym in alphabet:
        vocab[sym] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=None,
        chat_template=R1_ZERO_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    # Tags are single tokens but plain text (not "special"), so decode() keeps them.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tok.padding_side = "left"
    return tok


def load_tokenizer(path: str | Path):
    """Load the tokenizer of a checkpoint or Hugging Face folder (``AutoTokenizer``), left padding.
    A damaged tokenizer file is a one-line ``NanoseekError`` naming the folder."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # the tokenizers library raises a bare Exception for a malformed tokenizer.json
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise NanoseekError(f"cannot load the tokenizer in {path} (tokenizer.json, tokenizer_config.json): "
                            f"{type(e).__name__}: {first}") from None
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def render_prompt(tokenizer, question: str, system: str | None = None) -> str:
    """The prompt text for one question with the tokenizer's chat template (generation prompt on).

    A tokenizer without a chat template (a base model's) gets a plain prompt instead: the system
    text and a newline if given, then ``question + "\\n"``; the model simply continues the text.
    """
    if not getattr(tokenizer, "chat_template", None):
        return (f"{system}\n" if system else "") + question + "\n"
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def template_prefills_think(tokenizer) -> bool:
    """True when the chat template's generation prompt already opens ``<think>``."""
    probe = render_prompt(tokenizer, "x")
    return probe.rstrip().endswith(THINK_OPEN)


def stop_token_ids(tokenizer) -> list[int]:
    """Every id that ends a completion: the EOS id(s) of the tokenizer (deduplicated, in order)."""
    ids: list[int] = []
    for t in (tokenizer.eos_token_id,):
        if isinstance(t, int) and t not in ids:
            ids.append(t)
    for name in ("<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "<｜end▁of▁sentence｜>"):
        tid = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
        if isinstance(tid, int) and tid not in ids:
            ids.append(tid)
    return ids


def split_reasoning(text: str, think_prefilled: bool = False,
                    answer_tags: bool = False) -> tuple[str | None, str | None]:
    """``(reasoning_content, content)`` of a finished generation ``text``, as the DeepSeek API splits
    a reasoning model's output (API docs, "Reasoning Model (deepseek-reasoner)"; DEEPSEEK.md §3).
    The tag text itself appears in neither field.

    * Think block: if the chat template pre-filled ``<think>`` (``think_prefilled``), ``text``
      starts inside the block and only closes it; otherwise a block is recognised only when
      ``text`` starts (after whitespace) with ``<think>``. With no block, everything is content and
      reasoning is None.
    * Reasoning = the block's text up to the first ``</think>``; content = the text after it. A
      text cut off before ``</think>`` has reasoning only (content None).
    * ``answer_tags`` (models trained with the R1-Zero template, R1 paper v1 Table 1): content is
      the body of ``<answer>…</answer>`` only; text before ``<answer>`` and after ``</answer>`` is
      dropped. With no ``<answer>`` the whole after-think text is the content.
    * Both fields are stripped of surrounding whitespace; a field with no text is None, never
      ``""`` (what a streaming client reconstructs, as streaming never sends empty deltas).

    ``nanoseek.serve.reasoning.ReasoningSplitter`` applies these rules to a text arriving in
    pieces; ``tests/test_reasoning_split.py`` checks that both agree on every cut.
    """
    reasoning, after = "", text
    if think_prefilled or text.lstrip().startswith(THINK_OPEN):
        block = text if think_prefilled else text.lstrip()[len(THINK_OPEN):]
        reasoning, closed, after = block.partition(THINK_CLOSE)
        if not closed:
            return reasoning.strip() or None, None
    if answer_tags:
        _, opened, answer = after.partition(ANSWER_OPEN)
        if opened:
            after = answer.partition(ANSWER_CLOSE)[0]
    return reasoning.strip() or None, after.strip() or None


def strip_reasoning(content: str) -> str:
    """An earlier assistant turn as it goes back into the prompt: the think block removed (the DeepSeek
    API drops earlier turns' reasoning, DEEPSEEK.md §3). Everything up to the last ``</think>`` goes."""
    if THINK_CLOSE in content:
        content = content.rsplit(THINK_CLOSE, 1)[1]
    return content.strip()
