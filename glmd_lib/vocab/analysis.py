"""What notebooks 01 and 02 compute, as two library calls that write their stage's artifacts.

* :func:`run_frequency` (notebook 01): token counts of the corpus and of every SuperGLUE task's texts under
  the teacher's tokenizer; Zipf fit and coverage. Writes ``<run_dir>/frequency/``: ``counts.csv``,
  ``task_counts.csv``, ``summary.json`` and the figures.
* :func:`run_vocab` (notebook 02): the :class:`~glmd_lib.vocab.vocab_map.VocabMap` built from those counts,
  and what it costs: coverage and student size against the kept size, the rows each choice of protected
  tokens spends (:mod:`glmd_lib.vocab.protected`), the teacher's embedding share of its parameters, the
  substitutes of the most frequent pruned tokens, and the teacher's probability mass on kept tokens on
  held-out text (:mod:`glmd_lib.vocab.mass`). Writes ``<run_dir>/vocab/``: ``vocab_map.json``,
  ``summary.json``, ``sizes.csv``, ``substitutes.csv``, figures.

File names come from :data:`glmd_lib.artifacts.STAGES` (the report reads them through it). Each call drops
the stage's ``COMPLETE.json`` first and writes it last, so an interrupted run is never taken for a finished
one. The result objects carry what the notebooks show; the figures are drawn by :mod:`glmd_lib.vocab.plots`.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from glmd_lib.artifacts import (begin_stage, STAGES, artifact, atomic_write_csv, atomic_write_json, mark_complete,
                                save_figure)
from glmd_lib.config.stages import FrequencyConfig, VocabConfig
from glmd_lib.data.corpus import CorpusError, default_corpus, describe_source, iter_corpus_lines, superglue_texts
from glmd_lib.data.paths import resolve_superglue_dir
from glmd_lib.device import get_device
from glmd_lib.models.student_config import student_config
from glmd_lib.models.teacher import count_parameters, load_teacher, load_tokenizer, model_class
from glmd_lib.superglue.patterns import verbalizer_token_ids
from glmd_lib.vocab import plots
from glmd_lib.vocab.factorized import embedding_parameters
from glmd_lib.vocab.frequency import (count_tokens, coverage, coverage_curve, frequency_order, read_counts, summarize,
                                      write_counts)
from glmd_lib.vocab.mass import grid_record, mass_summary, teacher_mass
from glmd_lib.vocab.protected import config_token_ids, protect_table
from glmd_lib.vocab.substitutes import embedding_matrix
from glmd_lib.vocab.vocab_map import VocabMap, kept_size, select_kept

SIZE_RATES = (1 / 48, 1 / 24, 1 / 12, 1 / 6, 1 / 3, 0.5, 2 / 3)  # kept sizes of notebook 02's table
MIN_HELDOUT_WORDS = 12  # held-out paragraphs of at least this many words (skips titles and headings)
# published shapes of two teachers, for notebook 02's embedding-share table (their weights are not needed:
# the models are built on the meta device): a 49k vocabulary on a deep model, a 262k one on a shallow model
REFERENCE_TEACHERS = {
    "SmolLM2-135M": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                         tie_word_embeddings=True)),
    "Gemma-3-270M": ("Gemma3TextConfig", dict(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                              num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                              head_dim=256, tie_word_embeddings=True)),
}


# --------------------------------------------------------------------------------------------
# stage bookkeeping
# --------------------------------------------------------------------------------------------

def _finish(cfg: FrequencyConfig | VocabConfig, figures: dict[str, Any]) -> None:
    """Save the figures beside the artifacts (the report collects them), then mark the stage complete."""
    for name, fig in figures.items():
        save_figure(fig, cfg.out_dir, name)
    mark_complete(cfg.out_dir, list(STAGES[cfg.stage].files) + [f"{name}.png" for name in figures])


# --------------------------------------------------------------------------------------------
# notebook 01: token frequencies
# --------------------------------------------------------------------------------------------

@dataclass
class FrequencyResult:
    """What notebook 01 shows: the counts, ``summary.json``, the counts table and coverage at fixed sizes."""

    counts: np.ndarray                 # [V] corpus counts
    task_counts: dict[str, np.ndarray]  # task -> [V] counts of its texts
    summary: dict[str, Any]
    table: pd.DataFrame                # counts.csv: one row per token, most frequent first
    coverage: pd.DataFrame             # rows "top 1k" ...; columns corpus, SuperGLUE (all tasks), each task
    seconds: float                     # time spent counting the corpus
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def superglue(self) -> np.ndarray:
        return np.sum(list(self.task_counts.values()), axis=0)

    def curves(self) -> dict[str, np.ndarray]:
        """Cumulative coverage curves, all ranked by the *corpus* counts (that ranking chooses the kept tokens)."""
        order = frequency_order(self.counts)
        named = {"corpus": self.counts, "SuperGLUE (all)": self.superglue, **self.task_counts}
        return {name: coverage_curve(c, order) for name, c in named.items()}


def _coverage_by_size(counts: np.ndarray, order: np.ndarray) -> dict[str, float]:
    return {str(k): v for k, v in coverage(counts, order=order).items()}


def frequency_summary(counts: np.ndarray, task_counts: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`~glmd_lib.vocab.frequency.summarize` of the corpus plus the tasks' coverage under its ranking."""
    order = frequency_order(counts)
    superglue = np.sum(list(task_counts.values()), axis=0)
    return {**summarize(counts),
            "superglue_tokens": int(superglue.sum()),
            "superglue_types_seen": int((superglue > 0).sum()),
            "superglue_coverage": _coverage_by_size(superglue, order),
            "task_tokens": {t: int(c.sum()) for t, c in task_counts.items()},
            "task_coverage": {t: _coverage_by_size(c, order) for t, c in task_counts.items()},
            "superglue_types_unseen_in_corpus": int(((superglue > 0) & (counts == 0)).sum())}


def coverage_table(summary: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame({"corpus": summary["coverage"], "SuperGLUE (all tasks)": summary["superglue_coverage"],
                          **summary["task_coverage"]})
    table.index = [f"top {int(k) // 1024}k" for k in table.index]
    return table


def count_task_texts(cfg: FrequencyConfig, tokenizer: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """Counts of each configured task's texts; tasks missing from the data folder are skipped and listed."""
    sg_dir = resolve_superglue_dir(cfg.superglue_dir)
    present = [t for t in cfg.tasks if (sg_dir / t).is_dir()]
    if not present:
        raise CorpusError(f"none of the tasks {cfg.tasks} is in {sg_dir}: set superglue_dir or $GLMD_DATA")
    counts = {t: count_tokens(superglue_texts(t, sg_dir, max_examples=cfg.max_task_examples), tokenizer,
                              batch_lines=cfg.batch_lines) for t in present}
    return counts, [t for t in cfg.tasks if t not in present]


def run_frequency(cfg: FrequencyConfig) -> FrequencyResult:
    """Notebook 01's work: count, summarise, write ``counts.csv``, ``task_counts.csv``, ``summary.json``, figures."""
    begin_stage(cfg)
    tokenizer = load_tokenizer(cfg.teacher)
    source = cfg.corpus or default_corpus("train")  # not the folder: its valid.txt is notebook 02's held-out text
    t0 = time.perf_counter()
    counts = count_tokens(source, tokenizer, max_lines=cfg.max_lines, batch_lines=cfg.batch_lines)
    seconds = time.perf_counter() - t0
    task_counts, missing = count_task_texts(cfg, tokenizer)
    summary = {**frequency_summary(counts, task_counts), "corpus": describe_source(source),
               "max_lines": cfg.max_lines, "teacher": cfg.teacher, "tasks_missing": missing}
    table = write_counts(counts, tokenizer, artifact(cfg.run_dir, "frequency", "counts.csv"))
    atomic_write_csv(artifact(cfg.run_dir, "frequency", "task_counts.csv"),
                     pd.DataFrame({"token_id": np.arange(len(counts)), "corpus": counts, **task_counts}))
    atomic_write_json(artifact(cfg.run_dir, "frequency", "summary.json"), summary)
    result = FrequencyResult(counts, task_counts, summary, table, coverage_table(summary), seconds)
    result.figures = plots.frequency_figures(result)
    _finish(cfg, result.figures)
    return result


# --------------------------------------------------------------------------------------------
# notebook 02: the vocabulary map and what it costs
# --------------------------------------------------------------------------------------------

@dataclass
class VocabResult:
    """What notebook 02 shows: the map, ``summary.json``, the sizes and substitutes tables, held-out masses."""

    vocab_map: VocabMap
    summary: dict[str, Any]
    sizes: pd.DataFrame                # sizes.csv
    substitutes: pd.DataFrame          # substitutes.csv
    masses: dict[float, np.ndarray]    # temperature -> teacher mass on kept tokens, per held-out position
    mass_grid: pd.DataFrame            # mean kept mass per kept size (rows) and temperature (mass.grid_frame)
    protect: pd.DataFrame              # rows each protect choice spends (protected.protect_table)
    embedding_shares: pd.DataFrame     # the teacher's embedding share of its parameters, and two references
    example: dict[str, Any]            # a text round-tripped through the map
    figures: dict[str, Any] = field(default_factory=dict)


def student_parameters(teacher_config: Any, cfg: VocabConfig, vocab_size: int) -> int:
    """Parameters of the configured student with ``vocab_size`` rows, built on the meta device (no memory)."""
    scfg = student_config(teacher_config, cfg, vocab_size, arch=cfg.student_arch)
    with torch.device("meta"):
        return count_parameters(model_class(scfg).from_config(scfg))


def embedding_share(model: Any) -> dict[str, Any]:
    """The input and output embeddings' share of a model's parameters (tied: one matrix, counted once).

    This is the part of a model that vocabulary compression shrinks: about a fifth of SmolLM2-135M, about
    three fifths of Gemma-3-270M. A student of the teacher's shape keeps roughly the teacher's share.
    """
    tables = {id(m.weight): m.weight.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
              if m is not None}
    total = count_parameters(model)
    return {"vocabulary": int(model.get_input_embeddings().weight.shape[0]), "parameters": total,
            "embedding parameters": sum(tables.values()), "embedding share": sum(tables.values()) / total,
            "tied": len(tables) == 1}


def embedding_shares(teacher: Any, name: str) -> pd.DataFrame:
    """:func:`embedding_share` of the teacher and of :data:`REFERENCE_TEACHERS` (built on the meta device)."""
    import transformers

    rows = {f"{Path(name).name} (this run)": embedding_share(teacher)}  # a folder's or hub id's last part
    for ref, (cls_name, fields) in REFERENCE_TEACHERS.items():
        config = getattr(transformers, cls_name)(**fields)
        with torch.device("meta"):
            rows[ref] = embedding_share(model_class(config).from_config(config))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("teacher")


def _share(counts: np.ndarray, ids: np.ndarray) -> float:
    return float(counts[ids].sum() / max(int(counts.sum()), 1))


def sizes_table(cfg: VocabConfig, teacher_config: Any, vmap: VocabMap, counts: np.ndarray,
                superglue: np.ndarray) -> pd.DataFrame:
    """Coverage (share of tokens kept as they are) and student parameters against the kept size.

    Every size uses the map's own keep rule (:func:`~glmd_lib.vocab.vocab_map.select_kept`); the last row is
    the full vocabulary.
    """
    V, protected = vmap.vocab_size, vmap.protected_ids
    sizes = sorted({kept_size(V, r, cfg.multiple_of) for r in SIZE_RATES} | {vmap.num_kept})
    rows = []
    for K in (k for k in sizes if len(protected) < k < V):
        kept = vmap.kept_ids.numpy() if K == vmap.num_kept else select_kept(counts, protected, K)
        rows.append({"kept": K, "share of vocabulary": K / V, "corpus coverage": _share(counts, kept),
                     "SuperGLUE coverage": _share(superglue, kept),
                     "student parameters": student_parameters(teacher_config, cfg, K), "this map": K == vmap.num_kept})
    rows.append({"kept": V, "share of vocabulary": 1.0, "corpus coverage": 1.0, "SuperGLUE coverage": 1.0,
                 "student parameters": student_parameters(teacher_config, cfg, V), "this map": False})
    table = pd.DataFrame(rows)
    table["parameters vs full"] = table["student parameters"] / rows[-1]["student parameters"]
    return table


def factorized_alternative(teacher_config: Any, cfg: VocabConfig, vocab_size: int, full_params: int) -> tuple[int, int]:
    """``(E, parameters)`` of the configured student with the whole vocabulary but an ALBERT-style factorised
    embedding of width ``E = H/4`` (the alternative the paper argues against)."""
    scfg = student_config(teacher_config, cfg, vocab_size, arch=cfg.student_arch)
    hidden = getattr(scfg, "hidden_size", None) or scfg.n_embd
    width = max(16, hidden // 4)
    return width, (full_params - embedding_parameters(vocab_size, hidden)
                   + embedding_parameters(vocab_size, hidden, embedding_size=width))


def substitutes_table(vmap: VocabMap, counts: np.ndarray, teacher: Any, tokenizer: Any, n: int = 20) -> pd.DataFrame:
    """The ``n`` most frequent pruned tokens (the ones that matter most) and the kept token replacing each."""
    pruned = vmap.pruned_ids.numpy()
    top = pruned[np.argsort(-counts[pruned], kind="stable")][:n]
    subs = vmap.substitutes[torch.from_numpy(top)].numpy()
    emb = embedding_matrix(teacher).float().cpu()
    cos = torch.nn.functional.cosine_similarity(emb[top], emb[subs], dim=-1).numpy()
    return pd.DataFrame({"pruned id": top, "pruned token": tokenizer.convert_ids_to_tokens(top.tolist()),
                         "corpus count": counts[top], "substitute id": subs,
                         "substitute": tokenizer.convert_ids_to_tokens(subs.tolist()), "cosine": cos})


def heldout_lines(cfg: VocabConfig) -> tuple[str, list[str]]:
    """``(name, lines)`` of held-out text never counted in notebook 01: ``cfg.heldout``, else the corpus's
    ``valid.txt``, else the SuperGLUE RTE texts; paragraphs of at least :data:`MIN_HELDOUT_WORDS` words."""
    try:
        source = cfg.heldout or default_corpus("valid")
    except CorpusError:
        name, lines = "SuperGLUE RTE texts", superglue_texts("RTE", resolve_superglue_dir())
    else:
        name, lines = describe_source(source), iter_corpus_lines(source)
    kept = list(itertools.islice((line for line in lines if len(line.split()) >= MIN_HELDOUT_WORDS),
                                 cfg.mass_check_lines))
    if not kept:
        raise CorpusError(f"held-out text {name} has no line of at least {MIN_HELDOUT_WORDS} words; set heldout")
    return name, kept


def example_lines(n_task: int = 40, n_corpus: int = 200) -> list[str]:
    """Lines to pick an illustration from: RTE texts and the start of the training corpus, whichever exist."""
    readers = (lambda: superglue_texts("RTE", resolve_superglue_dir(), max_examples=n_task),
               lambda: list(iter_corpus_lines(default_corpus("train"), max_lines=n_corpus)))
    lines: list[str] = []
    for read in readers:
        try:
            lines += read()
        except CorpusError:  # an illustration only: use what is there
            pass
    return lines


def roundtrip_example(vmap: VocabMap, tokenizer: Any, lines: list[str], max_tokens: int = 60) -> dict[str, Any]:
    """Of the lines of at most ``max_tokens`` tokens, the one with most pruned tokens, mapped teacher ids ->
    student ids -> teacher ids; substituted tokens are marked ``[...]`` in ``student``."""
    encoded = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"], dtype=torch.long) for t in lines]
    short = [(int((~vmap.is_kept(ids)).sum()), n) for n, ids in enumerate(encoded) if 0 < len(ids) <= max_tokens]
    if not short:
        return {}
    n = max(short)[1]
    ids = encoded[n]
    back = vmap.unmap_ids(vmap.map_ids(ids))
    marked = "".join(tokenizer.decode([int(b)]) if a == b else f"[{tokenizer.decode([int(b)])}]"
                     for a, b in zip(ids.tolist(), back.tolist()))
    return {"original": lines[n], "student": marked, "substituted": int((ids != back).sum()), "tokens": len(ids)}


def _read_frequency(run_dir: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Corpus counts and summed SuperGLUE counts from notebook 01's artifacts (which must be complete)."""
    STAGES["frequency"].require(run_dir)
    counts = read_counts(artifact(run_dir, "frequency", "counts.csv"), vocab_size)
    tasks = pd.read_csv(artifact(run_dir, "frequency", "task_counts.csv"))
    return counts, tasks.drop(columns=["token_id", "corpus"]).to_numpy().sum(1)


def _build_map(cfg: VocabConfig, teacher: Any, tokenizer: Any, counts: np.ndarray) -> tuple[VocabMap, dict[str, Any]]:
    """The map of ``cfg`` (saved, and read back to check the file) and what it protects and costs to build."""
    verbalizers = sorted(verbalizer_token_ids(tokenizer))
    extra = sorted(set(verbalizers) | config_token_ids(teacher.config))  # the student's config names them
    t0 = time.perf_counter()
    vmap = VocabMap.build(counts, tokenizer, keep=cfg.keep_tokens if cfg.keep_tokens is not None else cfg.keep_rate,
                          protected_ids=extra, multiple_of=cfg.multiple_of, substitute=cfg.substitute,
                          embeddings=teacher, pruned_mass=cfg.pruned_mass, protect=cfg.protect)
    info = {"build_seconds": time.perf_counter() - t0, "protected": len(vmap.protected_ids), "protect": cfg.protect,
            "protect_choices": protect_table(tokenizer, extra, vmap.num_kept), "verbalizer_ids": verbalizers,
            "verbalizer_tokens": tokenizer.convert_ids_to_tokens(verbalizers)}
    VocabMap.load(vmap.save(cfg.out_dir), tokenizer=tokenizer)  # the file reads back, for this tokenizer
    return vmap, info


def run_vocab(cfg: VocabConfig) -> VocabResult:
    """Notebook 02's work: build and save the map; write ``sizes.csv``, ``substitutes.csv``, ``summary.json``."""
    begin_stage(cfg)
    torch.manual_seed(cfg.seed)
    device = get_device(cfg.device)
    teacher, tokenizer = load_teacher(cfg.teacher, device=device)
    counts, superglue = _read_frequency(cfg.run_dir, len(tokenizer))
    vmap, built = _build_map(cfg, teacher, tokenizer, counts)
    sizes = sizes_table(cfg, teacher.config, vmap, counts, superglue)
    substitutes = substitutes_table(vmap, counts, teacher, tokenizer)
    atomic_write_csv(artifact(cfg.run_dir, "vocab", "sizes.csv"), sizes)
    atomic_write_csv(artifact(cfg.run_dir, "vocab", "substitutes.csv"), substitutes)
    heldout, lines = heldout_lines(cfg)
    mass = teacher_mass(teacher, tokenizer, vmap, lines, device, counts=counts)
    shares = embedding_shares(teacher, cfg.teacher)
    this, full = sizes[sizes["this map"]].iloc[0], sizes.iloc[-1]
    width, factorized = factorized_alternative(teacher.config, cfg, vmap.vocab_size, int(full["student parameters"]))
    summary = {
        "vocab_size": vmap.vocab_size, "kept": vmap.num_kept, "kept_share": vmap.num_kept / vmap.vocab_size, **built,
        "corpus_coverage": float(this["corpus coverage"]), "superglue_coverage": float(this["SuperGLUE coverage"]),
        "substitute_method": vmap.method, "pruned_mass": vmap.pruned_mass, "fingerprint": vmap.fingerprint,
        "student_parameters_full_vocab": int(full["student parameters"]),
        "student_parameters_kept_vocab": int(this["student parameters"]),
        "student_parameters_factorized_embedding": factorized, "factorized_embedding_size": width,
        "teacher_embedding_share": embedding_share(teacher),
        "teacher_kept_mass": mass_summary(mass["masses"]), "renormalize_vs_substitute_tv": mass["tv"],
        "kept_mass_grid": grid_record(mass["grid"]), "kept_mass_grid_positions": mass["grid_positions"],
        "teacher_argmax_kept": mass["argmax_kept"],
        "heldout": heldout, "heldout_lines": len(lines), "heldout_positions": mass["positions"]}
    atomic_write_json(artifact(cfg.run_dir, "vocab", "summary.json"), summary)
    result = VocabResult(vmap, summary, sizes, substitutes, mass["masses"], mass["grid"],
                         pd.DataFrame(built["protect_choices"]).set_index("protect"), shares,
                         roundtrip_example(vmap, tokenizer, example_lines()))
    result.figures = plots.vocab_figures(result)
    _finish(cfg, result.figures)
    return result
