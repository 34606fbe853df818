"""PET-style cloze patterns and verbalizers: how a language model answers a SuperGLUE example.

GLM and GLMD cast every task as filling a blank (Schick & Schütze's PET patterns):

* **single-token tasks** (BoolQ, CB, RTE, WiC, WSC, MultiRC, and AX-b/AX-g with RTE's patterns): the
  prompt ends where the answer goes; the score of each label is the log-probability of its verbalizer
  token there (" Yes", " No", " Maybe" ...). A causal LM reads the logits of the prompt's last token;
  a masked LM reads them at a ``[MASK]`` placed after the prompt.
* **multi-token candidates** (COPA, ReCoRD): one sequence per candidate, prompt + candidate; its score
  is the sum of the candidate tokens' log-probabilities (causal: each token given the ones before;
  masked: one mask per candidate token, read in a single pass as PET does).

WSC deviates from "candidates": a SuperGLUE WSC example carries a single candidate referent
(``span1_text``) and a yes/no label, with no alternatives to rank, so it is asked as a yes/no question.

Each task has at least two patterns (``pattern_id`` 0 and 1). The verbalizer tokens of every pattern
are checked to be single tokens of the tokenizer (:func:`check_verbalizers`) and are exported as the
protected set of the vocabulary compression (:func:`verbalizer_token_ids`): a student must keep them.

The ``Cloze`` objects hold teacher-tokenizer ids; ``glmd_lib.tasks.scoring`` turns them into scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from glmd_lib.superglue.data import LABELS, TASKS, Example

SINGLE_TOKEN_TASKS = ("BoolQ", "CB", "RTE", "WiC", "WSC", "MultiRC", "AX-b", "AX-g")
CANDIDATE_TASKS = ("COPA", "ReCoRD")

# verbalizers per task and pattern, in LABELS order (leading space: the word follows "Answer:")
VERBALIZERS: dict[str, list[list[str]]] = {
    "BoolQ": [[" No", " Yes"], [" False", " True"]],
    "CB": [[" Yes", " No", " Maybe"], [" Yes", " No", " Maybe"]],
    "RTE": [[" Yes", " No"], [" Yes", " No"]],
    "WiC": [[" No", " Yes"], [" No", " Yes"]],
    "WSC": [[" No", " Yes"], [" False", " True"]],
    "MultiRC": [[" No", " Yes"], [" No", " Yes"]],
}
VERBALIZERS["AX-b"] = VERBALIZERS["AX-g"] = VERBALIZERS["RTE"]  # the diagnostics are scored as RTE


@dataclass
class Prompt:
    """A pattern's output in text: ``parts`` (text, truncatable) form the prompt, then the answer slot,
    then ``after``. ``candidates`` are the texts ranked for candidate tasks (None: single-token task)."""

    parts: list[tuple[str, bool]]
    candidates: list[str] | None = None
    after: str = ""


@dataclass
class Cloze:
    """One example as token ids of the teacher's tokenizer.

    ``sequences``: one per choice for candidate tasks, else one.
    ``answer_positions``: single-token tasks: the position whose logits give the answer (causal: the
    prompt's last token; masked: the mask).
    ``candidate_spans`` / ``candidate_ids``: candidate tasks: ``[start, end)`` of the scored tokens in each
    sequence (causal: the candidate's own tokens, each predicted from position ``t-1``; masked: the mask
    tokens) and the token ids scored there.
    ``choices``: the label value (or ReCoRD entity string) each score column stands for.
    ``label``: index of the gold choice, or None (test split; ReCoRD query whose answer is no entity).
    """

    task: str
    idx: Any
    kind: str
    sequences: list[list[int]]
    choices: list[Any]
    label: int | None = None
    choice_token_ids: list[int] | None = None
    answer_positions: list[int] | None = None
    candidate_spans: list[tuple[int, int]] | None = None
    candidate_ids: list[list[int]] | None = None

    @property
    def n_choices(self) -> int:
        return len(self.choices)

    @property
    def max_len(self) -> int:
        return max(len(s) for s in self.sequences)

    @property
    def single_token(self) -> bool:
        return self.choice_token_ids is not None


# ----------------------------------------------------------------------------------------------
# patterns (text)
# ----------------------------------------------------------------------------------------------

def _q(s: str) -> str:
    """A statement as a question: 'the language was peeled down.' -> 'the language was peeled down?'"""
    return s.strip().rstrip(".?!") + "?"


def _nli(premise: str, hypothesis: str, pid: int, maybe: bool) -> Prompt:
    if pid == 0:
        return Prompt([(premise.strip(), True), (f"\nQuestion: {_q(hypothesis)} Answer:", False)])
    opts = "Yes, no, or maybe?" if maybe else "Yes or no?"
    return Prompt([("Premise: ", False), (premise.strip(), True),
                   (f"\nHypothesis: {hypothesis.strip()}\nDoes the premise imply the hypothesis? {opts} Answer:",
                    False)])


def _lower_first(s: str) -> str:
    s = s.strip()
    if len(s) > 1 and s[0].isupper() and not s.startswith("I ") and s[1].islower():
        return s[0].lower() + s[1:]
    return s


def _copa(ex: Example, pid: int) -> Prompt:
    f = ex.fields
    premise = f["premise"].strip()
    if pid == 0:  # "The item was packaged in bubble wrap because it was fragile."
        joiner = " because" if f["question"] == "cause" else " so"
        return Prompt([(premise.rstrip("."), False), (joiner, False)],
                      candidates=[" " + _lower_first(f["choice1"]), " " + _lower_first(f["choice2"])])
    q = "What was the cause?" if f["question"] == "cause" else "What happened as a result?"
    return Prompt([(premise, False), (f" {q} Answer:", False)],
                  candidates=[" " + f["choice1"].strip(), " " + f["choice2"].strip()])


def _record(ex: Example, pid: int) -> Prompt:
    f = ex.fields
    passage = f["passage"].replace("@highlight\n", "- ")
    before, _, rest = f["query"].partition("@placeholder")
    before = before.rstrip()
    sep = "\n" if pid == 0 else "\nQuestion: "
    space = " " if before else ""
    # causal models score the entity and the rest of the query; masked models fill only the entity
    return Prompt([(passage.strip(), True), (sep + before, False)],
                  candidates=[space + c for c in ex.candidates], after=rest)


def _after_passage(passage: str, question: str) -> Prompt:
    """A passage (the part truncated first when too long) followed by the question part of a pattern."""
    return Prompt([(passage.strip(), True), (question, False)])


def _single(task: str) -> Callable[[Example, int], Prompt]:
    def build(ex: Example, pid: int) -> Prompt:
        f = ex.fields
        if task in ("CB", "RTE", "AX-g"):
            return _nli(f["premise"], f["hypothesis"], pid, maybe=task == "CB")
        if task == "AX-b":
            return _nli(f["sentence1"], f["sentence2"], pid, maybe=False)
        if task == "BoolQ":
            q = _q(f["question"])
            return _after_passage(f["passage"], (f"\nQuestion: {q} Answer:",
                                                 f"\nBased on the passage, is it true that {q} Answer:")[pid])
        if task == "WiC":
            w, s1, s2 = f["word"], f["sentence1"].strip(), f["sentence2"].strip()
            if pid == 0:
                return Prompt([(f"{s1}\n{s2}\nQuestion: Is the word '{w}' used in the same sense in both "
                                f"sentences above? Answer:", False)])
            return Prompt([(f"Does '{w}' mean the same thing in these two sentences?\n{s1}\n{s2}\nAnswer:", False)])
        if task == "WSC":
            pron, ref = f["target"]["span2_text"], f["target"]["span1_text"]
            return _after_passage(f["text"], (
                f"\nQuestion: In the passage above, does the pronoun '{pron}' refer to {ref}? Answer:",
                f"\nIn the passage above, the pronoun '{pron}' refers to {ref}. True or False? Answer:")[pid])
        if task == "MultiRC":
            q, a = f["question"].strip(), f["answer"].strip()
            return _after_passage(f["paragraph"], (
                f"\nQuestion: {q}\nIs the answer \"{a}\" correct? Answer:",
                f"\nQuestion: {q}\nCandidate answer: {a}\nIs the candidate answer true? Answer:")[pid])
        raise AssertionError(task)
    return build


PATTERNS: dict[str, Callable[[Example, int], Prompt]] = {t: _single(t) for t in SINGLE_TOKEN_TASKS}
PATTERNS.update({"COPA": _copa, "ReCoRD": _record})
N_PATTERNS = {t: 2 for t in TASKS}


def prompt_text(ex: Example, pattern_id: int = 0) -> str:
    """The prompt as plain text (for display); the answer slot is shown as ``___``."""
    p = PATTERNS[ex.task](ex, pattern_id)
    text = "".join(t for t, _ in p.parts) + " ___" + p.after
    if p.candidates:
        text += "   candidates: " + " | ".join(c.strip() for c in p.candidates[:8])
    return text


# ----------------------------------------------------------------------------------------------
# verbalizers
# ----------------------------------------------------------------------------------------------

def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def verbalizer_ids(tokenizer, task: str, pattern_id: int = 0) -> list[int]:
    """The single token of each label's verbalizer, in label order; ValueError if one is not one token."""
    words = VERBALIZERS[task][pattern_id]
    ids = []
    for w in words:
        toks = _encode(tokenizer, w)
        if len(toks) != 1:
            raise ValueError(f"verbalizer {w!r} of {task} pattern {pattern_id} is {len(toks)} tokens {toks} in "
                             f"{type(tokenizer).__name__} (name_or_path={getattr(tokenizer, 'name_or_path', '?')}); "
                             f"single-token tasks need single-token verbalizers")
        if toks[0] == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"verbalizer {w!r} of {task} pattern {pattern_id} is the unknown token of "
                             f"{type(tokenizer).__name__}; choose words in its vocabulary")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"verbalizers {words} of {task} pattern {pattern_id} map to the same token(s) {ids}")
    return ids


def check_verbalizers(tokenizer, tasks=None, pattern_ids=None) -> dict[tuple[str, int], list[int]]:
    """Check every verbalizer of ``tasks`` (default all) and ``pattern_ids`` (default all); return their ids."""
    out = {}
    for task in tasks or SINGLE_TOKEN_TASKS:
        if task not in VERBALIZERS:
            continue
        for pid in pattern_ids if pattern_ids is not None else range(len(VERBALIZERS[task])):
            out[(task, pid)] = verbalizer_ids(tokenizer, task, pid)
    return out


def verbalizer_token_ids(tokenizer, tasks=None, pattern_ids=None) -> set[int]:
    """The protected set for vocabulary compression: every verbalizer token of ``tasks`` (default all).

    Candidate tasks (COPA, ReCoRD) contribute nothing: their candidates are ordinary text that the
    vocabulary map substitutes like any other input.
    """
    return {i for ids in check_verbalizers(tokenizer, tasks, pattern_ids).values() for i in ids}


# ----------------------------------------------------------------------------------------------
# text -> ids
# ----------------------------------------------------------------------------------------------

def _special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer adds around a text (BERT: [CLS] ... [SEP]; SmolLM2: none)."""
    bare = _encode(tokenizer, "a")
    full = list(tokenizer("a")["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def _fit(parts: list[list[int]], flags: list[bool], budget: int) -> list[int]:
    """Concatenate ``parts``, shortening the truncatable ones (keeping their start) to fit ``budget``;
    if that is not enough, drop tokens from the left so that the answer slot at the end survives."""
    total = sum(len(p) for p in parts)
    over = total - budget
    if over > 0:
        for i, flag in enumerate(flags):
            if flag and over > 0:
                cut = min(over, len(parts[i]))
                parts[i] = parts[i][:len(parts[i]) - cut]
                over -= cut
    ids = [t for p in parts for t in p]
    return ids[-budget:] if budget > 0 and len(ids) > budget else ids


def build_cloze(task: str, examples: list[Example], tokenizer, kind: str = "causal", pattern_id: int = 0,
                max_len: int = 256) -> list[Cloze]:
    """Token-id clozes for ``examples`` of ``task`` (AX-b/AX-g use RTE's wording).

    ``kind``: "causal" (answer after the prompt) or "masked" (answer at mask tokens). Sequences are at
    most ``max_len`` tokens: the passage-like part is truncated first.
    """
    if kind not in ("causal", "masked"):
        raise ValueError(f"kind must be 'causal' or 'masked', got {kind!r}")
    if task not in PATTERNS:
        raise ValueError(f"unknown task {task!r}; known: {list(PATTERNS)}")
    if not 0 <= pattern_id < N_PATTERNS[task]:
        raise ValueError(f"{task} has patterns 0..{N_PATTERNS[task] - 1}, got pattern_id={pattern_id}")
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if kind == "masked" and mask_id is None:
        raise ValueError("kind='masked' needs a tokenizer with a mask token")
    pre, post = _special_wrap(tokenizer)
    if kind == "causal":
        post = []  # a causal LM answers right after the prompt
    single = task in SINGLE_TOKEN_TASKS
    choice_ids = verbalizer_ids(tokenizer, task, pattern_id) if single else None
    out = []
    for ex in examples:
        if ex.task != task:
            raise ValueError(f"build_cloze({task!r}) got an example of {ex.task} (idx {ex.idx})")
        p = PATTERNS[task](ex, pattern_id)
        parts = [_encode(tokenizer, t) for t, _ in p.parts]
        flags = [f for _, f in p.parts]
        after = _encode(tokenizer, p.after) if p.after and kind == "masked" else []
        if single:
            slot = [mask_id] if kind == "masked" else []
            budget = max_len - len(pre) - len(slot) - len(after) - len(post)
            prompt = pre + _fit(parts, flags, budget)
            seq = prompt + slot + after + post
            pos = len(prompt) if kind == "masked" else len(prompt) - 1
            label = LABELS[task].index(ex.label) if ex.label is not None else None
            out.append(Cloze(task, ex.idx, kind, [seq], list(LABELS[task]), label,
                             choice_token_ids=list(choice_ids), answer_positions=[pos]))
            continue
        # candidate tasks: one sequence per candidate
        cands = [c + p.after if kind == "causal" else c for c in p.candidates]
        cand_ids = [_encode(tokenizer, c) for c in cands]
        if not cand_ids:
            raise ValueError(f"{task} example {ex.idx} has no candidates")
        longest = max(len(c) for c in cand_ids)
        budget = max_len - len(pre) - longest - len(after) - len(post)
        prompt = pre + _fit(parts, flags, max(budget, 1))
        seqs, spans = [], []
        for c in cand_ids:
            slot = c if kind == "causal" else [mask_id] * len(c)
            seqs.append(prompt + slot + after + post)
            spans.append((len(prompt), len(prompt) + len(c)))
        if task == "COPA":
            choices = [0, 1]
            label = ex.label
        else:  # ReCoRD: choices are the entity strings; gold = first candidate among the answers
            choices = list(ex.candidates)
            label = next((i for i, c in enumerate(choices) if ex.label and c in ex.label), None)
        out.append(Cloze(task, ex.idx, kind, seqs, choices, label, candidate_spans=spans, candidate_ids=cand_ids))
    return out
