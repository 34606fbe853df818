"""Exporting a student as a plain Hugging Face folder: the renumbered tokenizer against the VocabMap on real
text, decoding, logits against the Student API, generation in an interpreter without glmd_lib, the model card."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from glmd_lib.models.export import (EXPORT_FILE, ExportError, export_ids, export_student, load_exported,
                                    renumber_tokenizer_json, student_rows)
from glmd_lib.models.student import Student, build_student, load_student, save_student
from glmd_lib.vocab.vocab_map import VocabMap

VALID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus" / "gutenberg" / "valid.txt"
TEXT_FALLBACK = "The quick brown fox jumps over the lazy dog.\nOnce upon a time there was a small house."


@pytest.fixture(scope="module")
def half_map(smol_tokenizer):
    """Half of the real SmolLM2 vocabulary kept at random (so real text has many pruned tokens), each pruned
    token with a random non-special kept substitute (so pruned tokens read many different rows; a similarity
    search over 24k x 24k tokens would only slow the test down)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 1000, (len(smol_tokenizer),), generator=g)
    base = VocabMap.build(counts, smol_tokenizer, 0.5, substitute="unk")
    rows = torch.tensor([r for r, t in enumerate(base.kept_ids.tolist()) if t not in set(base.protected_ids)])
    t2s = base.teacher_to_student.clone()
    t2s[base.pruned_ids] = rows[torch.randint(len(rows), (len(base.pruned_ids),), generator=g)]
    return VocabMap(base.kept_ids, t2s, method="cosine", fingerprint=base.fingerprint,
                    protected_ids=base.protected_ids, meta=base.meta)


def _student(vm, arch="same", tied=True):
    """A tiny random student of a Llama teacher over the SmolLM2 vocabulary (only the teacher's config is needed)."""
    from transformers import LlamaConfig

    teacher = LlamaConfig(vocab_size=vm.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2, tie_word_embeddings=True)
    model = build_student(teacher, {"layers": 2, "hidden": 32, "heads": 2}, vm, arch=arch, seed=3)
    if not tied:  # an untied output layer must be expanded too
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, half_map, smol_tokenizer):
    """A stage-1 student (not in a run directory) and its export: (student_dir, out_dir)."""
    base = tmp_path_factory.mktemp("export")
    save_student(_student(half_map), base / "student", smol_tokenizer, half_map,
                 extra={"teacher": "tiny-random-llama", "stage": "stage1"})
    return base / "student", export_student(base / "student", base / "out")


def _real_lines(sample_text: str, n: int = 120) -> list[str]:
    lines = [line for line in sample_text.splitlines() if line.strip()]
    if VALID.exists():
        with open(VALID, encoding="utf-8") as f:
            lines += [line.strip() for line, _ in zip(f, range(4 * n)) if line.strip()][:n]
    return lines


def test_tokenizer_gives_the_student_ids(exported, half_map, smol_tokenizer, sample_text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported[1], trust_remote_code=False)
    assert len(tok) == half_map.vocab_size
    K, new, pruned_seen = half_map.num_kept, export_ids(half_map), 0
    for line in _real_lines(sample_text):
        teacher = torch.tensor(smol_tokenizer(line, add_special_tokens=False)["input_ids"])
        ids = torch.tensor(tok(line, add_special_tokens=False)["input_ids"])
        assert torch.equal(ids, new[teacher]), line  # the teacher's segmentation, renumbered: merges intact
        assert torch.equal(student_rows(half_map, ids), half_map.map_ids(teacher)), line
        kept = half_map.is_kept(teacher)
        assert torch.equal(ids[kept], half_map.map_ids(teacher)[kept]) and bool((ids[~kept] >= K).all())
        pruned_seen += int((~kept).sum())
        assert tok.decode(ids) == smol_tokenizer.decode(teacher)  # lossless, pruned tokens included
    assert pruned_seen > 100  # the text did exercise pruned tokens
    # special tokens keep their meaning under their new ids
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        teacher_id = getattr(smol_tokenizer, f"{name}_id")
        assert getattr(tok, f"{name}_id") == int(new[teacher_id]) == int(half_map.map_ids(torch.tensor(teacher_id)))
    assert tok("<|im_start|>hi<|im_end|>")["input_ids"][0] == int(new[smol_tokenizer.convert_tokens_to_ids("<|im_start|>")])


def test_decoding_round_trips_every_kept_token(exported, half_map, smol_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported[1])
    ours = tok.batch_decode([[i] for i in range(half_map.num_kept)])
    teacher = smol_tokenizer.batch_decode([[int(t)] for t in half_map.kept_ids])
    assert ours == teacher


def test_model_config_and_logits_match_the_student(exported, half_map, smol_tokenizer, sample_text):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    student_dir, out = exported
    student = load_student(student_dir)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    cfg, K, V = AutoConfig.from_pretrained(out), half_map.num_kept, half_map.vocab_size
    assert cfg.vocab_size == V and cfg.glmd_export["kept"] == K and not hasattr(cfg, "glmd_vocab_map")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(cfg, key) == getattr(student.model.config, key) < K
        assert getattr(model.generation_config, key) == getattr(student.model.generation_config, key)
    assert model.generation_config.suppress_tokens == list(range(K, V))
    tok = AutoTokenizer.from_pretrained(out)
    texts = _real_lines(sample_text, 8)[-8:]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = student.encode(texts)
    assert torch.equal(student_rows(half_map, enc["input_ids"]), ref["input_ids"])
    with torch.no_grad():
        ours = model(**enc).logits
        theirs = student.model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[..., :K][mask], theirs[mask], rtol=1e-5, atol=1e-5)
    # the extra columns repeat the substitutes' scores (and generation suppresses them)
    subs = half_map.teacher_to_student[half_map.pruned_ids]
    torch.testing.assert_close(ours[..., K:][mask], theirs[..., subs][mask], rtol=1e-5, atol=1e-5)


PLAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from transformers import pipeline
    out, prompt = sys.argv[1], sys.argv[2]
    generate = pipeline("text-generation", model=out)
    text = generate(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
    tok, model = generate.tokenizer, generate.model
    enc = tok("Once upon a time", return_tensors="pt")
    torch.manual_seed(0)
    new = model.generate(**enc, max_new_tokens=30, do_sample=True, top_k=0)[0, enc["input_ids"].shape[1]:]
    print(json.dumps({"text": text, "new": new.tolist(), "glmd": [m for m in sys.modules if m.split(".")[0] == "glmd_lib"]}))
""")


def _plain_run(out: Path, prompt: str, cwd: Path) -> dict:
    """Run PLAIN_SCRIPT in a fresh, isolated interpreter (only transformers; glmd_lib is never imported)."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-I", "-c", PLAIN_SCRIPT, str(out), prompt], capture_output=True,
                         text=True, cwd=cwd, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["glmd"] == []
    return got


def test_pipeline_runs_without_glmd_lib(exported, half_map, tmp_path):
    got = _plain_run(exported[1], "The capital of France is", tmp_path)
    assert got["text"].startswith("The capital of France is") and len(got["text"]) > len("The capital of France is")
    assert got["new"] and max(got["new"]) < half_map.num_kept  # never a pruned (duplicate) column


@pytest.mark.slow
def test_real_student_generates_readable_text_without_glmd_lib(tmp_path):
    """SmolLM2 itself cut to half of its vocabulary (kept by Gutenberg counts) and exported: plain
    transformers continues a prompt exactly as the Student API does, in words."""
    from glmd_lib.models.teacher import load_teacher

    model, tok = load_teacher("smollm2-135m")
    ids = [i for line in tok(_real_lines(TEXT_FALLBACK, 2000))["input_ids"] for i in line]
    vm = VocabMap.build(torch.bincount(torch.tensor(ids), minlength=len(tok)), tok, 0.5, substitute="unk")
    student = Student(vm.shrink_model(model), tok, vm)
    save_student(student.model, tmp_path / "student", tok, vm, extra={"teacher": "smollm2-135m"})
    prompt = "Once upon a time, in a small village,"
    want = student.generate(prompt, 12)
    got = _plain_run(export_student(tmp_path / "student", tmp_path / "out"), prompt, tmp_path)
    assert got["text"] == prompt + want and len(want.split()) >= 5 and want.replace(" ", "").isprintable()
    assert max(got["new"]) < vm.num_kept


@pytest.mark.parametrize("arch,tied", [("same", False), ("gpt2", True)])
def test_other_students_export_exactly(tmp_path, half_map, smol_tokenizer, arch, tied):
    model = _student(half_map, arch=arch, tied=tied)
    save_student(model, tmp_path / "student", smol_tokenizer, half_map)
    out = export_student(tmp_path / "student", tmp_path / "out")
    from transformers import AutoModelForCausalLM

    exp = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (exp.get_output_embeddings().weight is exp.get_input_embeddings().weight) == tied
    teacher = torch.tensor([smol_tokenizer("It was the best of times, it was the worst of times.")["input_ids"]])
    with torch.no_grad():
        ours = exp(input_ids=export_ids(half_map)[teacher]).logits[..., :half_map.num_kept]
        theirs = model(input_ids=half_map.map_ids(teacher)).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_load_exported_scores_as_the_student(exported, half_map, sample_text):
    """glmd's own evaluation reads the exported files back and computes what it computes for the student."""
    student_dir, out = exported
    back, student = load_exported(out), load_student(student_dir)
    assert back.model.config.vocab_size == half_map.num_kept and back.vocab_map.num_kept == half_map.num_kept
    texts = _real_lines(sample_text, 6)[-6:]
    assert back.encode(texts)["input_ids"].tolist() == student.encode(texts)["input_ids"].tolist()
    for ours, theirs in zip(back.score(texts), student.score(texts)):
        assert ours["tokens"] == theirs["tokens"] and ours["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)
    assert back.generate("Once upon a time", 12) == student.generate("Once upon a time", 12)
    with pytest.raises(ExportError, match="not written by export_student"):
        load_exported(student_dir)


def test_masked_lm_student_exports_exactly(tmp_path, bert_tokenizer):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig

    V = len(bert_tokenizer)
    counts = torch.randint(0, 100, (V,), generator=torch.Generator().manual_seed(1))
    vm = VocabMap.build(counts, bert_tokenizer, 0.5, substitute="unk", multiple_of=8)
    teacher = BertConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, pad_token_id=bert_tokenizer.pad_token_id)
    model = build_student(teacher, {"layers": 1, "hidden": 32, "heads": 2}, vm, seed=1).eval()
    save_student(model, tmp_path / "student", bert_tokenizer, vm)
    out = export_student(tmp_path / "student", tmp_path / "out")
    text = "the quick brown fox [MASK] over the lazy dog, zebra!"
    enc, ours = bert_tokenizer(text, return_tensors="pt"), AutoTokenizer.from_pretrained(out)(text, return_tensors="pt")
    assert torch.equal(ours["input_ids"], export_ids(vm)[enc["input_ids"]])  # [CLS]/[SEP] renumbered too
    with torch.no_grad():
        got = AutoModelForMaskedLM.from_pretrained(out).eval()(**ours).logits[..., :vm.num_kept]
        want = model(input_ids=vm.map_ids(enc["input_ids"]), attention_mask=enc["attention_mask"]).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "fill-mask" in (out / "README.md").read_text()


def test_full_vocabulary_student_and_refusals(tmp_path, smol_tokenizer, exported):
    from transformers import AutoConfig

    ident = VocabMap.identity(smol_tokenizer)
    save_student(_student(ident), tmp_path / "full", smol_tokenizer, ident)
    out = export_student(tmp_path / "full", tmp_path / "full_out")
    assert AutoConfig.from_pretrained(out).vocab_size == len(smol_tokenizer)
    assert json.loads((out / "generation_config.json").read_text()).get("suppress_tokens") is None
    assert json.loads((out / EXPORT_FILE).read_text())["substitute_rows"] == []
    assert "nothing pruned" in (out / "README.md").read_text()
    with pytest.raises(ExportError, match="another folder"):
        export_student(exported[0], exported[0])
    with pytest.raises(ExportError, match="cannot renumber"):
        renumber_tokenizer_json({"model": {"type": "Mystery"}}, [0])


def test_factorized_student_is_refused_by_name(tmp_path, tiny_llama, smol_tokenizer):
    """A factorised embedding (glmd+al) has no plain transformers class: refused before anything is written."""
    ident = VocabMap.identity(smol_tokenizer)
    student = build_student(tiny_llama.config, dict(layers=1, hidden=64, heads=2, embedding_dim=16), seed=0)
    save_student(student, tmp_path / "fact", smol_tokenizer, ident)
    with pytest.raises(ExportError, match="factorised embedding"):
        export_student(tmp_path / "fact", tmp_path / "fact_out")
    assert not (tmp_path / "fact_out").exists()


def test_template_processor_ids_are_renumbered():
    data = {"model": {"type": "WordPiece", "vocab": {"[CLS]": 0, "[SEP]": 1, "a": 2}},
            "added_tokens": [{"id": 0, "content": "[CLS]"}, {"id": 1, "content": "[SEP]"}],
            "post_processor": {"type": "Sequence", "processors": [
                {"type": "TemplateProcessing", "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [0]}}},
                {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]}]},
            "padding": {"pad_id": 1}}
    out = renumber_tokenizer_json(data, [2, 0, 1])
    assert out["model"]["vocab"] == {"[SEP]": 0, "a": 1, "[CLS]": 2}
    assert [t["id"] for t in out["added_tokens"]] == [2, 0] and out["padding"]["pad_id"] == 0
    procs = out["post_processor"]["processors"]
    assert procs[0]["special_tokens"]["[CLS]"]["ids"] == [2] and procs[1]["sep"] == ["[SEP]", 0]


def test_model_card(exported, half_map, tmp_path, smol_tokenizer):
    card = (exported[1] / "README.md").read_text()
    assert "library_name: transformers" in card and "tiny-random-llama" in card
    assert f"{half_map.num_kept:,} of the teacher's {half_map.vocab_size:,} tokens are kept" in card
    assert "Not evaluated" in card and "cannot do" in card and "cosine" in card
    # a stage-2 student inside a run directory: settings, held-out numbers and dev scores with intervals
    run = tmp_path / "run"
    for stage, cfg in {"vocab": {"keep_rate": 0.5, "substitute": "cosine", "run_dir": str(run)},
                       "stage1": {"temperature": 15.0, "teacher": "tiny-random-llama", "corpus": "/x/y"},
                       "stage2": {"steps_2a": 10}}.items():
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / "config.json").write_text(json.dumps({"stage": stage, "config": cfg}))
    (run / "stage1" / "metrics.json").write_text(json.dumps(
        {"teacher_params": 1234567, "valid_kl": 0.5, "valid_top1_agreement": 0.4, "valid_student_ppl": 90.0,
         "valid_teacher_ppl": 30.0, "valid_tokens": 4096}))
    (run / "eval").mkdir()
    (run / "eval" / "results.csv").write_text(
        "model,task,metric,value,params,n_examples,ci_low,ci_high\n"
        "student,RTE,score,0.61,5,277,0.55,0.67\nstudent,AX-g,score,0.5,5,356,,\n"
        "teacher,RTE,score,0.7,9,277,0.6,0.8\nstudent,CB,score,0.4,5,56,0.3,0.5\n")
    save_student(_student(half_map), run / "stage2" / "RTE" / "student", smol_tokenizer, half_map,
                 extra={"stage": "stage2", "task": "RTE", "pattern_id": 1})
    card = (export_student(run / "stage2" / "RTE" / "student", tmp_path / "rte") / "README.md").read_text()
    assert "for RTE" in card and "`temperature`=15.0" in card and "`steps_2a`=10" in card
    assert "run_dir" not in card and "/x/y" not in card and "1,234,567" in card and "top-1 agreement 40.0%" in card
    assert "| RTE | 0.610 | [0.550, 0.670] | 277 |" in card and "| AX-g | 0.500 | not recorded | 356 |" in card
    assert "| CB |" not in card and "Not evaluated" not in card


def test_evaluation_of_the_exported_folder_equals_the_student(exported, tmp_path):
    """Notebook 06 / run_eval accept an exported folder and score it exactly as the student it came from."""
    from glmd_lib.superglue.data import read_split
    from glmd_lib.superglue.patterns import build_cloze
    from glmd_lib.superglue.toy import write_toy_dataset
    from glmd_lib.tasks.evaluate import evaluate_clozes, load_for_eval

    data = write_toy_dataset(tmp_path / "sg", n=8, tasks=("RTE", "COPA"))
    student_dir, out = exported
    for task in ("RTE", "COPA"):
        examples = read_split(task, "val", data)
        results = []
        for folder in (student_dir, out):
            model, tok, vmap = load_for_eval(str(folder))
            clozes = build_cloze(task, examples, tok, kind="causal", max_len=96)
            results.append(evaluate_clozes(model, task, clozes, examples, vocab_map=vmap))
        assert results[0]["predictions"] == results[1]["predictions"]
        assert results[0]["score"] == results[1]["score"]
        for a, b in zip(results[0]["scores"], results[1]["scores"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_glmd_export_command(exported, tmp_path):
    student_dir, _ = exported
    glmd = Path(sys.executable).parent / "glmd"
    ok = subprocess.run([str(glmd), "export", str(student_dir), str(tmp_path / "cli-out")], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "cli-out" / EXPORT_FILE).exists() and (tmp_path / "cli-out" / "README.md").exists()
    bad = subprocess.run([str(glmd), "export", str(tmp_path / "nothing"), str(tmp_path / "x")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("glmd export: error:") and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "x").exists()
