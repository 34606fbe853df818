"""A saved student as a plain Hugging Face folder: ``AutoTokenizer``, ``AutoModelForCausalLM``, ``pipeline``.

A student saved by :func:`glmd_lib.models.student.save_student` is the teacher's tokenizer plus
``vocab_map.json``: only :func:`~glmd_lib.models.student.load_student` can feed it, because the teacher's
ids are not the student's rows. :func:`export_student` writes a folder that needs no ``glmd_lib``, no
custom code and no ``trust_remote_code``.

Why the exported ids are a renumbering and not the map itself
-------------------------------------------------------------
The map is many-to-one (every pruned token reads as the row of its substitute). A fast tokenizer cannot
express that while keeping its merges and its decoding (checked with ``tokenizers`` 0.23):

* a token's id is looked up from its own string (``vocab: str -> id``), so "pruned string -> substitute
  id" means two strings sharing one id;
* BPE compiles its merges to ``(left id, right id) -> (rank, new id)``: with shared ids the merges of a
  pruned token fire on its substitute and the other way round, and colliding pairs overwrite each other;
* decoding reads ``id -> string`` from a map built by iterating a hash map, so a shared id decodes to an
  arbitrary one of its strings, differently in each process;
* no component after the model (post-processors add special tokens and fix offsets) renumbers ids.

Measured on SmolLM2's tokenizer with half of the vocabulary kept (Gutenberg counts, cosine substitutes,
3,000 lines of ``valid.txt``): shared ids change the encoding of 43% of the lines and decode 5,171 of
the 24,576 kept tokens wrongly. Dropping the pruned tokens and their merges instead (a BPE over the kept
tokens only, ``ignore_merges`` on) keeps ids below ``K`` but changes 30% of the lines (4.7% of those
made only of kept tokens: their merges pass through pruned tokens), and 101 lines no longer decode to
themselves: a character whose byte-level symbol is pruned (``#``, ``$``, ``%``, ``©`` ...) becomes the
unknown token.

What is shipped instead (exact on every input): the teacher's tokenizer *renumbered* (a permutation, so
merges and decoding stay intact): kept tokens get ids ``0 .. K-1`` in the map's order (= the student's
rows), pruned tokens ``K .. V-1`` (ascending teacher id). The model's embedding gets ``V`` rows again:
row ``K + j`` is a copy of the row of pruned token ``j``'s substitute, so the model reads a pruned token
exactly as the student reads its substitute, and its logits ``[..., :K]`` are the student's. The output
columns ``K ..`` repeat their substitutes' scores; ``generation_config.suppress_tokens`` removes them, so
generation is the student's. ``config.glmd_export["kept"]`` records ``K`` for code that wants the
student's distribution (``logits[..., :K]``); :func:`load_exported` gives the folder back as a
:class:`~glmd_lib.models.student.Student` for glmd's own evaluation. The price: the folder holds
``(V - K) x hidden`` more parameters than the student (copies), and ``config.vocab_size`` is ``V``.

The folder also gets a model card (``README.md``, :mod:`glmd_lib.models.model_card`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from glmd_lib.artifacts import atomic_path
from glmd_lib.models.model_card import model_card
from glmd_lib.models.student import Student, load_student
from glmd_lib.models.teacher import count_parameters, model_kind
from glmd_lib.vocab.vocab_map import VocabMap, protected_token_ids, tokenizer_fingerprint

EXPORT_FORMAT = "glmd-export"
EXPORT_FILE = "glmd_export.json"  # K, the map's provenance and each pruned id's row: for load_exported
TOKENIZER_FILE = "tokenizer.json"
# tokenizer files copied as they are (besides tokenizer.json, which is rewritten); ids inside are remapped
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
PROBE = "The quick brown fox, café naïve 1234 ÆØÅ #$%&<> 🙂\nIt was the best of times."


class ExportError(ValueError):
    """A student cannot be exported as asked; the message names the cause."""


# --------------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------------

def export_order(vocab_map: VocabMap) -> torch.Tensor:
    """``[V]``: the teacher id behind each exported id (kept ids in row order, then the pruned ones)."""
    return torch.cat([vocab_map.kept_ids, vocab_map.pruned_ids])


def export_ids(vocab_map: VocabMap) -> torch.Tensor:
    """``[V]``: the exported id of each teacher id (kept: its student row; pruned: ``K`` and up)."""
    order = export_order(vocab_map)
    new = torch.empty_like(order)
    new[order] = torch.arange(len(order))
    return new


def student_rows(vocab_map: VocabMap, exported: torch.Tensor) -> torch.Tensor:
    """Exported ids -> the student rows they read (pruned ids -> their substitute's row) = ``map_ids``."""
    return vocab_map.teacher_to_student[export_order(vocab_map)[exported.cpu()]].to(exported.device)


# --------------------------------------------------------------------------------------------
# the tokenizer: the teacher's, renumbered
# --------------------------------------------------------------------------------------------

def _remap_processor(node: Any, new: list[int]) -> None:
    """Special-token ids inside a post-processor (Template, Bert, Roberta, and Sequences of them)."""
    if not isinstance(node, dict):
        return
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(node.get(key), list):
            node[key] = [node[key][0], new[node[key][1]]]
    for spec in (node.get("special_tokens") or {}).values():  # TemplateProcessing
        spec["ids"] = [new[i] for i in spec["ids"]]
    for child in node.get("processors") or []:
        _remap_processor(child, new)


def renumber_tokenizer_json(data: dict[str, Any], new: list[int]) -> dict[str, Any]:
    """``tokenizer.json`` content with every id ``t`` replaced by ``new[t]``; merges are left as they are."""
    model = data["model"]
    if isinstance(model.get("vocab"), dict):  # BPE, WordPiece, WordLevel
        model["vocab"] = dict(sorted(((s, new[i]) for s, i in model["vocab"].items()), key=lambda kv: kv[1]))
    elif model.get("type") == "Unigram":  # ids are positions in the list
        order = sorted(range(len(model["vocab"])), key=lambda t: new[t])
        model["vocab"] = [model["vocab"][t] for t in order]
        if model.get("unk_id") is not None:
            model["unk_id"] = new[model["unk_id"]]
    else:
        raise ExportError(f"cannot renumber a {model.get('type')!r} tokenizer model")
    for tok in data.get("added_tokens") or []:
        tok["id"] = new[tok["id"]]
    _remap_processor(data.get("post_processor"), new)
    if isinstance(data.get("padding"), dict) and data["padding"].get("pad_id") is not None:
        data["padding"]["pad_id"] = new[data["padding"]["pad_id"]]
    return data


def tokenizer_files(student_dir: Path, tokenizer: Any, vocab_map: VocabMap) -> dict[str, str]:
    """The exported tokenizer's files (name -> text): the student's, with every id renumbered."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"{student_dir}: the student's tokenizer ({type(tokenizer).__name__}) has no fast "
                          f"(tokenizers) backend to renumber")
    new = export_ids(vocab_map).tolist()
    if len(tokenizer) > len(new):
        raise ExportError(f"{student_dir}: the tokenizer has {len(tokenizer)} tokens, the map covers {len(new)}")
    files = {TOKENIZER_FILE: json.dumps(renumber_tokenizer_json(json.loads(backend.to_str()), new),
                                        ensure_ascii=False)}
    for name in TOKENIZER_EXTRAS:
        if (student_dir / name).exists():
            files[name] = (student_dir / name).read_text(encoding="utf-8")
    if "tokenizer_config.json" in files:
        cfg = json.loads(files["tokenizer_config.json"])
        if isinstance(cfg.get("added_tokens_decoder"), dict):
            cfg["added_tokens_decoder"] = {str(new[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
        files["tokenizer_config.json"] = json.dumps(cfg, ensure_ascii=False, indent=2)
    return files


# --------------------------------------------------------------------------------------------
# the model: the student's rows, then one copy of a substitute's row per pruned token
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def expand_rows(model: nn.Module, vocab_map: VocabMap) -> nn.Module:
    """In place: ``K`` -> ``V`` vocabulary rows; row ``K + j`` copies the row of pruned token ``j``'s substitute
    (input embedding, a separate output layer and its bias alike). Tied weights stay tied."""
    K, V = vocab_map.num_kept, vocab_map.vocab_size
    if int(model.config.vocab_size) != K:
        raise ExportError(f"the model has {model.config.vocab_size} vocabulary rows, the map keeps {K}")
    if V == K:
        return model
    subs = vocab_map.teacher_to_student[vocab_map.pruned_ids]
    model.resize_token_embeddings(V, mean_resizing=False)
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not tables[0]:
        tables.append(out.weight)
    if out is not None and getattr(out, "bias", None) is not None:
        tables.append(out.bias)
    for table in tables:
        table[K:] = table[subs.to(table.device)]
    return model


def _mark_config(model: nn.Module, vocab_map: VocabMap, kind: str) -> dict[str, Any]:
    """Record the export in the config; suppress the duplicate columns in generation (causal models).
    Returns the content of ``glmd_export.json`` (the config's record plus the row of every pruned id)."""
    cfg = model.config
    if hasattr(cfg, "glmd_vocab_map"):
        delattr(cfg, "glmd_vocab_map")  # describes the student's rows, not this folder's
    cfg.glmd_export = {"format": EXPORT_FORMAT, "kept": vocab_map.num_kept, "vocab_size": vocab_map.vocab_size,
                       "substitute": vocab_map.method, "teacher_tokenizer": vocab_map.fingerprint}
    gen = getattr(model, "generation_config", None)
    if kind == "causal" and gen is not None and vocab_map.num_kept < vocab_map.vocab_size:
        gen.suppress_tokens = list(range(vocab_map.num_kept, vocab_map.vocab_size))
    return {**cfg.glmd_export, "substitute_rows": vocab_map.teacher_to_student[vocab_map.pruned_ids].tolist()}


def _verify(folder: Path, teacher_tokenizer: Any, vocab_map: VocabMap) -> None:
    """Load the written tokenizer the plain way and check it against the teacher's on a probe text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    teacher_ids = teacher_tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    want = export_ids(vocab_map)[torch.tensor(teacher_ids)].tolist()
    got = tok(PROBE, add_special_tokens=False)["input_ids"]
    if got != want or tok.decode(got) != teacher_tokenizer.decode(teacher_ids):
        raise ExportError(f"the renumbered tokenizer in {folder} encodes {PROBE!r} as {got[:12]}..., expected "
                          f"{want[:12]}...: this tokenizer cannot be renumbered safely")


def export_student(student_dir: Path | str, out_dir: Path | str,
                   dev_scores: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``out_dir``: the student of ``student_dir`` (a :func:`save_student` folder) as a plain HF folder.

    ``dev_scores``: ``{task: {"value", "low", "high", "n"}}`` for the model card; ``None``: read from the run
    directory around ``student_dir`` when it has an evaluation of this student. Returns ``out_dir``.
    """
    student_dir, out_dir = Path(student_dir), Path(out_dir)
    if out_dir.resolve() == student_dir.resolve():
        raise ExportError(f"export into another folder than the student's own ({student_dir})")
    student = load_student(student_dir)
    vm, model = student.vocab_map, student.model
    if getattr(model.config, "glmd_embedding_dim", None):
        raise ExportError(f"{student_dir}: a student with a factorised embedding (E = "
                          f"{model.config.glmd_embedding_dim}) has no plain transformers class to load it; export a "
                          f"student trained without embedding_dim, or load this one with glmd_lib.load_student")
    files = tokenizer_files(student_dir, student.tokenizer, vm)
    params = {"student": count_parameters(model)}
    expand_rows(model, vm)
    record = _mark_config(model, vm, student.kind)
    params["exported"] = count_parameters(model)
    card = model_card(student_dir, vm, student.tokenizer, params, dev_scores)
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / EXPORT_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
        _verify(tmp, student.tokenizer, vm)
    return out_dir


def load_exported(path: Path | str, device: torch.device | str | None = None) -> Student:
    """An exported folder, loaded the plain way, back as a :class:`Student` over its own ids.

    The model keeps its first ``K`` rows (the student's; the others are copies) and the map folds each id
    ``K`` and up onto its substitute's row, so glmd's scoring (notebook 06) computes exactly what it computes
    for the student the folder came from, from the exported files.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = Path(path)
    if not (path / EXPORT_FILE).exists():
        raise ExportError(f"{path} was not written by export_student (no {EXPORT_FILE})")
    info = json.loads((path / EXPORT_FILE).read_text(encoding="utf-8"))
    K = int(info["kept"])
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    rows = torch.cat([torch.arange(K), torch.tensor(info["substitute_rows"], dtype=torch.long)])
    vm = VocabMap(torch.arange(K), rows, method=info["substitute"], fingerprint=tokenizer_fingerprint(tokenizer),
                  protected_ids=protected_token_ids(tokenizer), meta={"exported_from": info["teacher_tokenizer"]})
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    cls = AutoModelForMaskedLM if model_kind(config) == "masked" else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()
    if K < int(config.vocab_size):
        model.resize_token_embeddings(K)  # drops the copies; the student's K rows stay (tied weights too)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.suppress_tokens = None  # nothing left to suppress
    if device is not None:
        model.to(device)
    return Student(model, tokenizer, vm)
