"""The explorers of notebooks 02, 03, 05 and 06: their library functions, and their headless fallback."""
from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from glmd_lib.distill.explore import next_word_comparison, next_word_explorer
from glmd_lib.models.student import Student
from glmd_lib.tasks.explore import error_explorer, error_table, model_confusion, prediction_table
from glmd_lib.vocab.explore import recorded_similarity, student_reading, token_explorer, token_view
from glmd_lib.vocab.vocab_map import VocabMap

WIDGET = "application/vnd.jupyter.widget-view+json"
PROMPT = "The capital of France is"


@pytest.fixture
def vocab_map(smol_tokenizer):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 1000, (len(smol_tokenizer),), generator=g)
    common = smol_tokenizer(PROMPT + " Paris. Once upon a time", add_special_tokens=False)["input_ids"]
    counts[common] += 10_000
    return VocabMap.build(counts, smol_tokenizer, 0.1, substitute="unk")


def test_token_view_marks_pruned_tokens_and_their_substitutes(smol_tokenizer, vocab_map):
    text = "The capital of France is Paris, said the xylophonist."
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    pruned = [i for i in ids if not vocab_map.is_kept(torch.tensor([i])).item()]
    assert pruned, "the test text needs a pruned token"
    view = token_view(text, smol_tokenizer, vocab_map, similarity={pruned[0]: 0.5})
    assert view["id"].tolist() == ids and len(view) == len(ids)
    assert view.loc[view["kept"], "substitute"].eq("").all() and view.loc[view["kept"], "cosine"].isna().all()
    row = view[view["id"] == pruned[0]].iloc[0]
    assert row["substitute id"] == int(vocab_map.substitutes[pruned[0]]) and row["cosine"] == 0.5
    read = student_reading(text, smol_tokenizer, vocab_map)
    assert read == smol_tokenizer.decode(vocab_map.substitutes[torch.tensor(ids)].tolist()) and read != text


def test_recorded_similarity_reads_substitutes_csv(tmp_path):
    pd.DataFrame({"pruned id": [5, 7], "pruned token": ["a", "b"], "corpus count": [3, 2], "substitute id": [1, 2],
                  "substitute": ["c", "d"], "cosine": [0.25, 0.75]}).to_csv(tmp_path / "s.csv", index=False)
    assert recorded_similarity(tmp_path / "s.csv") == {5: 0.25, 7: 0.75}


def test_explorer_carries_a_static_table_and_redraws_on_input(smol_tokenizer, vocab_map):
    w = token_explorer(smol_tokenizer, vocab_map, "The capital")
    bundle = w._repr_mimebundle_()
    assert WIDGET in bundle and "<table" in bundle["text/html"] and "capital" in bundle["text/plain"]
    assert "NA" not in bundle["text/html"]  # kept tokens have no substitute: blank cells, not "<NA>"
    box, view = w.children
    before = view.value
    box.value = "Once upon a time"
    assert view.value != before and "time" in view.value


def test_next_word_comparison_is_zero_kl_for_the_teacher_itself(tiny_llama, smol_tokenizer, vocab_map):
    teacher = Student(tiny_llama, smol_tokenizer)
    shrunk = Student(vocab_map.shrink_model(copy.deepcopy(tiny_llama)), smol_tokenizer, vocab_map)
    table, kl = next_word_comparison(teacher, shrunk, PROMPT, temperature=2.0, k=5)
    assert abs(kl) < 1e-4 and len(table) == 5  # the prompt is all kept tokens: same logits at the kept ids
    assert table["teacher"].tolist() == table["student"].tolist()
    assert torch.allclose(torch.tensor(table["p teacher"].values), torch.tensor(table["p student"].values), atol=1e-5)
    assert table["p teacher"].is_monotonic_decreasing


def test_next_word_comparison_of_two_models_depends_on_temperature(make_tiny_llama, smol_tokenizer, vocab_map):
    teacher = Student(make_tiny_llama(seed=0), smol_tokenizer)
    other = Student(vocab_map.shrink_model(make_tiny_llama(seed=1)), smol_tokenizer, vocab_map)
    (t1, kl1), (_, kl10) = (next_word_comparison(teacher, other, PROMPT, t, k=3) for t in (1.0, 10.0))
    assert kl1 > 0 and kl10 > 0 and kl1 != pytest.approx(kl10)
    assert (t1["p teacher"] <= 1).all() and (t1["p student (same token)"] >= 0).all()
    long = "Premise: " + "it rained " * 20 + "all day.\nQuestion: was it wet? Answer:"
    w = next_word_explorer(lambda _t: (teacher, other), [(PROMPT, None), ("Once upon a", None), (long, "RTE")],
                           temperature=1.0)
    pick, text, temp, view = w.children
    assert "KL" in w._repr_mimebundle_()["text/plain"]
    pick.value = 1
    assert text.value == "Once upon a" and "Once upon a" in view.value
    # a task input: its end, on one line, from a word's start (no literal \n in the header or the drop-down)
    assert pick.options[2][0] == "RTE: …rained it rained it rained all day. ⏎ Question: was it wet? Answer:"
    pick.value = 2
    assert "day. ⏎ Question: was it wet? Answer:”" in view.value and "\\n" not in view.value
    assert temp.style.description_width == "initial"  # "temperature" shown whole, not cut to "temperat…"


def test_an_explorer_shows_a_failing_render_as_a_marked_error():
    """A render that raises leaves the widget alive and says so, in a class the browser tests look for."""
    import ipywidgets as widgets

    from glmd_lib.explore import ERROR_CLASS, explorer

    def render(n):
        if n < 0:
            raise ValueError("negative <n>")
        return [f"n = {n}"]

    box = widgets.IntText(value=1)
    view = explorer([box], render, render(1)).children[-1]
    assert ERROR_CLASS not in view.value and "n = 1" in view.value
    box.value = -1
    assert f'class="{ERROR_CLASS}"' in view.value and "ValueError" in view.value and "&lt;n&gt;" in view.value


def _predictions(path):
    rows = []
    yes, no = "entailment", "not_entailment"
    for model, preds in {"teacher": [yes, no, no], "student": [no, no, yes]}.items():
        for i, (gold, pred) in enumerate(zip([yes, no, no], preds)):
            rows.append({"model": model, "task": "RTE", "idx": i, "group": i, "label": gold, "prediction": pred,
                         "pattern_id": 0, "scores": [0.1 * i, None]})
    rows.append({"model": "student", "task": "COPA", "idx": [0, 1], "group": 0, "label": 0, "prediction": 1,
                 "pattern_id": 0, "scores": [-1.0, -0.5]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_error_table_lists_errors_with_both_models_scores(tmp_path):
    table = prediction_table(_predictions(tmp_path / "predictions.jsonl"))
    errors = error_table(table, "RTE", "student", texts={("RTE", "0"): "premise | hypothesis"})
    assert errors["idx"].tolist() == ["0", "2"] and errors["predicted"].tolist() == ["not_entailment", "entailment"]
    assert errors["teacher predicts"].tolist() == ["entailment", "not_entailment"]
    assert errors["student scores"].tolist() == ["0.00 —", "0.20 —"]
    assert errors["text"].tolist() == ["premise | hypothesis", ""]
    assert error_table(table, "COPA", "student")["idx"].tolist() == ["[0, 1]"]
    assert len(error_table(table, "RTE", "teacher")) == 0


def test_confusion_and_error_explorer_read_the_predictions_file(tmp_path):
    path = _predictions(tmp_path / "predictions.jsonl")
    m = model_confusion(path, "RTE", "student")
    assert m.to_numpy().sum() == 3 and m.loc["not_entailment", "entailment"] == 1
    assert model_confusion(path, "COPA", "student") is None and model_confusion(path, "RTE", "nobody") is None
    w = error_explorer(path, model="student", task="RTE")
    assert "2 errors of 3" in w._repr_mimebundle_()["text/plain"]
    task, model, page, view = w.children
    model.value = "teacher"
    assert "0 errors of 3" in view.value
    task.value = "COPA"
    assert "not a classification task" in view.value


def test_static_tables_keep_small_probabilities_readable():
    """Next-word probabilities of 1e-4 and below must not all print as 0.0000; a missing value is blank."""
    from glmd_lib.explore import static_html

    html = static_html(pd.DataFrame({"p": [0.25, 1.5e-5], "cosine": pd.array([None, 0.5], dtype="Float64")}))
    assert "1.5e-05" in html and "0.25" in html and "0.0000" not in html and "NA" not in html
