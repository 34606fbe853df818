"""Stage 1 end to end on tiny models: artifacts and metrics, compressed vocabulary, teacher cache, other
student architectures, a masked-LM teacher, resume, the command line, and clear errors for bad input."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from glmd_lib.config.stages import Stage1Config
from glmd_lib.artifacts import STAGES, ArtifactError, mark_complete
from glmd_lib.distill.stage1 import ARTIFACTS, Stage1Error, main, run_stage1
from glmd_lib.models.student import load_student
from glmd_lib.data.corpus import CorpusError
from glmd_lib.vocab.vocab_map import VocabMap, VocabMapError

METRICS = ["steps", "tokens_seen", "student_params", "teacher_params", "valid_kl", "valid_top1_agreement",
           "valid_student_ppl", "valid_teacher_ppl"]


@pytest.fixture
def corpus(tmp_path, sample_text):
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text(sample_text * 3)
    valid.write_text(sample_text)
    return train, valid


def _cfg(run_dir, corpus, **kw):
    train, valid = corpus
    base = dict(run_dir=str(run_dir), profile="smoke", corpus=str(train), valid_corpus=str(valid), steps=6,
                batch_size=2, seq_len=16, eval_batches=2, checkpoint_every=3, student_layers=1,
                student_hidden=32, student_heads=2, use_vocab_map=False)
    base.update(kw)
    return Stage1Config.resolve(**base)


def _write_vocab_stage(run_dir, tokenizer, keep=0.25, pruned_mass="renormalize"):
    counts = torch.arange(len(tokenizer)).flip(0)
    vm = VocabMap.build(counts, tokenizer, keep, substitute="unk", pruned_mass=pruned_mass)
    vm.save(run_dir / "vocab")
    mark_complete(run_dir / "vocab", ["vocab_map.json"])
    return vm


def test_stage1_with_vocab_map_writes_artifacts_and_metrics(tmp_path, corpus, smol_tokenizer):
    vm = _write_vocab_stage(tmp_path, smol_tokenizer)
    cfg = _cfg(tmp_path, corpus, use_vocab_map=True, steps=12, lr=3e-3)
    metrics = run_stage1(cfg, progress=False)
    out = tmp_path / "stage1"
    assert all((out / a).exists() for a in ARTIFACTS) and (out / "COMPLETE.json").exists()
    assert ARTIFACTS == list(STAGES["stage1"].files)  # the registry's list, not a second one
    assert (out / "curves.png").stat().st_size > 0  # the figure is the stage's, not the notebook's
    saved = json.loads((out / "metrics.json").read_text())
    assert set(METRICS) <= set(saved) and saved["steps"] == 12 and saved["tokens_seen"] == 12 * 2 * 16
    assert saved["num_kept"] == vm.num_kept and 0 <= saved["valid_top1_agreement"] <= 1
    # held-out figures carry block-bootstrap intervals around them
    assert saved["valid_top1_agreement_low"] <= saved["valid_top1_agreement"] <= saved["valid_top1_agreement_high"]
    assert saved["valid_student_ppl_low"] < saved["valid_student_ppl"] < saved["valid_student_ppl_high"]
    assert saved["valid_blocks"] == 2 * 2 and saved["valid_tokens"] == 4 * 16
    hist = pd.read_csv(out / "history.csv")
    assert {"step", "loss", "lr", "tokens_per_s", "kl", "ce"} <= set(hist.columns)
    assert hist["loss"].iloc[-3:].mean() < hist["loss"].iloc[:3].mean()  # it learns
    assert (hist["loss"] == hist["kl"]).all()  # CE is logged, not added
    student = load_student(out / "student")
    assert student.vocab_map.num_kept == vm.num_kept
    assert len(student.next_token_topk("The capital of France is", 5)) == 5


def test_teacher_cache_path_trains_and_reuses(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus, teacher_cache=True, cache_mode="topk", cache_topk=8)
    m = run_stage1(cfg, progress=False)
    assert (tmp_path / "stage1" / "teacher_cache" / "values.npy").exists()
    assert m["teacher_cache"] and m["steps"] == 6


def test_max_blocks_caps_the_distinct_blocks_and_the_teacher_cache(tmp_path, corpus):
    """max_blocks=4 with 6 steps of 2: the teacher caches 4 blocks once, the student sees them 3 times."""
    from glmd_lib.distill.teacher_cache import TeacherCache
    m = run_stage1(_cfg(tmp_path / "few", corpus, teacher_cache=True, max_blocks=4), progress=False)
    assert len(TeacherCache(tmp_path / "few" / "stage1" / "teacher_cache")) == 4
    assert m["steps"] == 6 and m["tokens_seen"] == 6 * 2 * 16
    run_stage1(_cfg(tmp_path / "all", corpus, teacher_cache=True), progress=False)  # None: one block per view
    assert len(TeacherCache(tmp_path / "all" / "stage1" / "teacher_cache")) == 12


def test_runs_sharing_a_cache_dir_pay_for_one_teacher_pass(tmp_path, corpus, monkeypatch):
    """Two runs (other students, other losses, other seeds) over the same blocks with cache_dir set: one training
    cache and one of the held-out blocks, each in a sub-folder named by its key, built by the first run and reused
    by the second (the held-out one also by a run without a training cache); other blocks get their own. The
    held-out figures from the kept hidden states are the live teacher's up to fp16 rounding."""
    from glmd_lib.distill import teacher_cache

    built = []
    real = teacher_cache.build_teacher_cache
    monkeypatch.setattr(teacher_cache, "build_teacher_cache", lambda *a, **k: built.append(1) or real(*a, **k))
    shared = tmp_path / "caches"
    corpus = (corpus[0], tmp_path / "other_valid.txt")  # the fixture's valid.txt is the first training blocks
    corpus[1].write_text(corpus[0].read_text()[700:])
    a = run_stage1(_cfg(tmp_path / "a", corpus, teacher_cache=True, max_blocks=4, cache_dir=str(shared)),
                   progress=False)
    assert len(built) == 2 and len(list(shared.iterdir())) == 2  # the training blocks' and the held-out blocks'
    run_stage1(_cfg(tmp_path / "b", corpus, teacher_cache=True, max_blocks=4, cache_dir=str(shared), seed=1,
                    loss="kd", ce_weight=0.5, student_hidden=16), progress=False)
    run_stage1(_cfg(tmp_path / "live", corpus, teacher_cache=False, cache_dir=str(shared)), progress=False)
    assert len(built) == 2 and len(list(shared.iterdir())) == 2
    assert not (tmp_path / "a" / "stage1" / "teacher_cache").exists()
    run_stage1(_cfg(tmp_path / "c", corpus, teacher_cache=True, max_blocks=6, cache_dir=str(shared)), progress=False)
    assert len(built) == 3 and len(list(shared.iterdir())) == 3  # other blocks: another key, the first cache kept
    alone = run_stage1(_cfg(tmp_path / "alone", corpus, teacher_cache=True, max_blocks=4), progress=False)
    assert a["teacher_tokens_per_s"] > 0 and alone["teacher_tokens_per_s"] > 0  # measured on a's first batch
    for k in ("valid_kl", "valid_kl_at_T", "valid_teacher_ppl", "valid_student_ppl"):
        assert a[k] == pytest.approx(alone[k], rel=1e-3), k
    assert abs(a["valid_top1_agreement"] - alone["valid_top1_agreement"]) <= 1 / a["valid_tokens"]


def test_gpt2_student_of_llama_teacher_and_teacher_init(tmp_path, corpus):
    m = run_stage1(_cfg(tmp_path / "a", corpus, student_arch="gpt2"), progress=False)
    assert load_student(tmp_path / "a" / "stage1" / "student").model.config.model_type == "gpt2"
    assert m["valid_kl"] > 0
    # the smoke teacher is 64 wide: a 64-wide student takes its layers
    run_stage1(_cfg(tmp_path / "b", corpus, init="teacher", student_hidden=64, student_kv_heads=1,
                    student_intermediate=128, steps=1), progress=False)


def test_frozen_embeddings_stay_the_teachers_projected_rows_while_the_layers_train(tmp_path, corpus):
    """init='teacher' with a 32-wide student of the 64-wide smoke teacher projects the embeddings; with
    train_embeddings=False stage 1 leaves them (and the tied head) exactly so and trains the rest."""
    from glmd_lib.models.student import build_student
    from glmd_lib.models.teacher import load_teacher

    cfg = _cfg(tmp_path, corpus, init="teacher", train_embeddings=False, steps=4, lr=1e-2)
    run_stage1(cfg, progress=False)
    teacher, _ = load_teacher(cfg.teacher)
    fresh = build_student(teacher.config, cfg, None, init="teacher", teacher=teacher, seed=cfg.seed)
    trained = load_student(tmp_path / "stage1" / "student").model
    assert torch.equal(trained.get_input_embeddings().weight, fresh.get_input_embeddings().weight)
    assert torch.equal(trained.get_output_embeddings().weight, fresh.get_output_embeddings().weight)
    layer = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(trained.state_dict()[layer], fresh.state_dict()[layer])
    # trained (the default): the embeddings move too
    run_stage1(_cfg(tmp_path / "t", corpus, init="teacher", steps=4, lr=1e-2), progress=False)
    moved = load_student(tmp_path / "t" / "stage1" / "student").model
    assert not torch.equal(moved.get_input_embeddings().weight, fresh.get_input_embeddings().weight)


def test_masked_lm_teacher(tmp_path, tiny_bert, bert_tokenizer, corpus):
    tdir = tmp_path / "bert"
    tiny_bert.save_pretrained(tdir)
    bert_tokenizer.save_pretrained(tdir)
    for on in ("masked", "all"):
        m = run_stage1(_cfg(tmp_path / on, corpus, teacher=str(tdir), mlm_loss_on=on, mlm_probability=0.3,
                            steps=3), progress=False)
        assert m["steps"] == 3
        hist = pd.read_csv(tmp_path / on / "stage1" / "history.csv")
        assert hist["loss"].notna().all()


def test_resume_continues_and_a_finished_run_is_not_retrained(tmp_path, corpus):
    cfg = _cfg(tmp_path, corpus, steps=6)
    run_stage1(cfg, progress=False)
    again = run_stage1(cfg, progress=False)
    assert again["resumed_from"] == 6
    longer = _cfg(tmp_path, corpus, steps=8)  # other total steps = other schedule: refused, not mixed
    from glmd_lib.trainer import CheckpointError
    with pytest.raises(CheckpointError, match="steps"):
        run_stage1(longer, progress=False)


def test_bad_input_is_refused_before_writing(tmp_path, corpus, sample_text, bert_tokenizer):
    with pytest.raises(Stage1Error, match="student_max_positions"):
        run_stage1(_cfg(tmp_path, corpus, seq_len=64, student_max_positions=32), progress=False)
    with pytest.raises(Stage1Error, match="teacher's maximum"):
        run_stage1(_cfg(tmp_path, corpus, seq_len=1024, student_max_positions=2048), progress=False)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Just a few words.\n")
    with pytest.raises(CorpusError, match="fewer than one batch"):
        run_stage1(_cfg(tmp_path, (tiny, corpus[1])), progress=False)
    with pytest.raises(ArtifactError, match="02_vocab_pruning"):
        run_stage1(_cfg(tmp_path, corpus, use_vocab_map=True), progress=False)
    # a map built for another tokenizer
    VocabMap.identity(bert_tokenizer).save(tmp_path / "vocab")
    mark_complete(tmp_path / "vocab", ["vocab_map.json"])
    with pytest.raises(VocabMapError, match="tokenizer"):
        run_stage1(_cfg(tmp_path, corpus, use_vocab_map=True), progress=False)
    assert not (tmp_path / "stage1" / "student").exists() and not (tmp_path / "stage1" / "checkpoints").exists()


def test_corrupted_checkpoint_on_resume(tmp_path, corpus):
    from glmd_lib.trainer import CheckpointError, list_checkpoints

    cfg = _cfg(tmp_path, corpus, steps=3)
    run_stage1(cfg, progress=False)
    _, path = list_checkpoints(tmp_path / "stage1" / "checkpoints")[-1]
    path.write_bytes(b"not a checkpoint")
    student_before = (tmp_path / "stage1" / "student" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="corrupted"):
        run_stage1(cfg, progress=False)
    assert path.read_bytes() == b"not a checkpoint"
    assert (tmp_path / "stage1" / "student" / "model.safetensors").read_bytes() == student_before


def test_command_line(tmp_path, corpus, capsys):
    train, valid = corpus
    rc = main(["--run-dir", str(tmp_path), "--profile", "smoke", "--no-progress", "-p", f"corpus={train}",
               "-p", f"valid_corpus={valid}", "-p", "steps=2", "-p", "batch_size=2", "-p", "seq_len=16",
               "-p", "use_vocab_map=false", "-p", "student_layers=1", "-p", "temperature=2"])
    assert rc == 0
    assert "valid_kl" in capsys.readouterr().out
    assert json.loads((tmp_path / "stage1" / "config.json").read_text())["config"]["temperature"] == 2.0
    assert main(["--run-dir", str(tmp_path), "--profile", "smoke", "-p", "stepz=3"]) == 2
    assert main(["--run-dir", str(tmp_path), "--profile", "smoke", "-p", "steps=many"]) == 2


# --------------------------------------------------------------------------------------------
# pruned_mass (issue #10, fix 1)
# --------------------------------------------------------------------------------------------

def test_pruned_mass_of_the_map_decides_the_target(tmp_path, corpus, smol_tokenizer):
    """The two modes give other losses from the very first step (same data, same initial student), the mode is
    recorded, and the approximate top-k cache refuses the substitute target before any work."""
    first = {}
    for mode in ("renormalize", "substitute"):
        run = tmp_path / mode
        _write_vocab_stage(run, smol_tokenizer, keep=0.05, pruned_mass=mode)
        metrics = run_stage1(_cfg(run, corpus, use_vocab_map=True, steps=2), progress=False)
        assert metrics["pruned_mass"] == mode
        assert load_student(run / "stage1" / "student").vocab_map.pruned_mass == mode  # stage 2 follows it
        first[mode] = pd.read_csv(run / "stage1" / "history.csv")["kl"].iloc[0]
    assert abs(first["substitute"] / first["renormalize"] - 1) > 1e-3, first
    with pytest.raises(Stage1Error, match="pruned_mass='substitute'.*cache_mode='hidden'"):
        run_stage1(_cfg(tmp_path / "substitute", corpus, use_vocab_map=True, teacher_cache=True, cache_mode="topk"),
                   progress=False)
    assert not (tmp_path / "substitute" / "stage1" / "teacher_cache").exists()


# --------------------------------------------------------------------------------------------
# the block separator (issue #10, fix 6)
# --------------------------------------------------------------------------------------------

def test_no_chat_template_token_reaches_stage1_blocks(tmp_path, corpus, smol_tokenizer):
    """SmolLM2-Instruct's eos is the chat token <|im_end|>; blocks are separated by its pre-training document
    separator <|endoftext|> instead (``separator="auto"``), or by newlines, or by eos when asked."""
    from glmd_lib.data.blocks import chat_template_ids, separator_ids, token_blocks

    chat = chat_template_ids(smol_tokenizer)
    assert chat == {smol_tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    assert smol_tokenizer.eos_token_id in chat  # why "eos" is the wrong default for an instruct teacher
    endoftext = smol_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert separator_ids(smol_tokenizer, "auto") == [endoftext]
    blocks = token_blocks(corpus[0], smol_tokenizer, 16, max_blocks=40)  # the default separator
    assert not set(blocks.flatten().tolist()) & chat and (blocks == endoftext).any()
    newline = token_blocks(corpus[0], smol_tokenizer, 16, max_blocks=40, separator="newline")
    assert not set(newline.flatten().tolist()) & (chat | {endoftext})
    eos = token_blocks(corpus[0], smol_tokenizer, 16, max_blocks=40, separator="eos")
    assert (eos == smol_tokenizer.eos_token_id).any()  # the old behaviour, only when asked for
    assert separator_ids(smol_tokenizer, "<|endoftext|>") == [endoftext]
    with pytest.raises(ValueError, match="separator.*'<\\|nope\\|>'.*auto, newline, eos"):
        separator_ids(smol_tokenizer, "<|nope|>")
    # the stage uses the setting and records the separator it used
    metrics = run_stage1(_cfg(tmp_path, corpus, steps=1), progress=False)
    assert metrics["separator"] == "<|endoftext|>"
    with pytest.raises(Stage1Error, match="separator"):
        run_stage1(_cfg(tmp_path / "bad", corpus, steps=1, separator="<|nope|>"), progress=False)


# --------------------------------------------------------------------------------------------
# a failing rerun (issue #11, point 1)
# --------------------------------------------------------------------------------------------

def test_a_failing_rerun_leaves_the_stage_incomplete_and_the_old_checkpoints(tmp_path, corpus, monkeypatch):
    """resume=False, then the loss turns NaN before the new run's first checkpoint: no COMPLETE.json (the old
    one no longer describes the directory), and the old run's checkpoints and history are back in place."""
    import glmd_lib.distill.stage1 as stage1_mod
    from glmd_lib.trainer import NonFiniteLossError, list_checkpoints

    cfg = _cfg(tmp_path, corpus, steps=6)
    run_stage1(cfg, progress=False)
    out = tmp_path / "stage1"
    assert (out / "COMPLETE.json").exists()
    old_ckpts = [s for s, _ in list_checkpoints(out / "checkpoints")]
    old_history = (out / "history.csv").read_bytes()

    real = stage1_mod.make_loss_fn

    def nan_loss(*args, **kwargs):
        fn = real(*args, **kwargs)

        def loss_fn(batch, model):
            loss, logs = fn(batch, model)
            return loss * float("nan"), logs
        return loss_fn

    monkeypatch.setattr(stage1_mod, "make_loss_fn", nan_loss)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        run_stage1(_cfg(tmp_path, corpus, steps=6, resume=False, lr=1e-3), progress=False)
    assert not (out / "COMPLETE.json").exists()
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == old_ckpts
    assert (out / "history.csv").read_bytes() == old_history
    # a bad parameter found late (after the set-up began) also withdraws the marker
    monkeypatch.undo()
    run_stage1(cfg, progress=False)
    assert (out / "COMPLETE.json").exists()
    with pytest.raises(Stage1Error, match="student_max_positions"):
        run_stage1(_cfg(tmp_path, corpus, seq_len=64, student_max_positions=32), progress=False)
    assert not (out / "COMPLETE.json").exists()


# --------------------------------------------------------------------------------------------
# the stage-1 losses of the comparison (issue #13): ce, kd, tinybert, minilm, factorised students
# --------------------------------------------------------------------------------------------

def _next_labels(ids):
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    return labels


def test_ce_loss_is_the_students_next_token_cross_entropy(make_tiny_llama):
    from glmd_lib.distill.distiller import Distiller

    student = make_tiny_llama(num_hidden_layers=1)
    ids = torch.randint(0, 1000, (2, 6), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    loss, logs = Distiller(student, 15.0, None, 4, 0.0, loss="ce")(ids, attn, None, attn.bool(), _next_labels(ids))
    logits = student(input_ids=ids).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    assert float(logs["count"]) == 10 and float(logs["kl"]) == 0


def test_chunked_kl_of_a_factorized_student_equals_the_naive_full_logits_kl(make_tiny_llama, tiny_llama):
    from glmd_lib.distill.distiller import Distiller
    from glmd_lib.distill.losses import distill_kl_reference
    from glmd_lib.models.student import build_student

    student = build_student(tiny_llama.config, dict(layers=1, hidden=32, heads=2, embedding_dim=8), seed=0)
    ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    with torch.no_grad():
        t_logits = tiny_llama(input_ids=ids).logits
    flat = t_logits.reshape(-1, t_logits.shape[-1])
    loss, _ = Distiller(student, 2.0, None, 3, 0.0)(ids, attn, lambda sl: flat[sl], attn.bool(), _next_labels(ids))
    loss.backward()
    table = student.get_input_embeddings().embed.weight
    chunked_grad, table.grad = table.grad.clone(), None
    ref = distill_kl_reference(student(input_ids=ids).logits, t_logits, attn, 2.0)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(chunked_grad, table.grad)  # the shared table gets both sides' gradient


def test_kd_adds_the_weighted_cross_entropy(make_tiny_llama, tiny_llama):
    from glmd_lib.distill.distiller import Distiller

    student = make_tiny_llama(num_hidden_layers=1, seed=2)
    ids = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    attn, labels = torch.ones_like(ids), _next_labels(ids)
    with torch.no_grad():
        flat = tiny_llama(input_ids=ids).logits.reshape(-1, student.config.vocab_size)
    kd, logs = Distiller(student, 3.0, None, 4, 0.5, loss="kd")(ids, attn, lambda sl: flat[sl], attn.bool(), labels)
    assert float(kd.detach()) == pytest.approx(float(logs["kl"]) + 0.5 * float(logs["ce"]), rel=1e-5)
    with pytest.raises(Exception, match="needs ce_weight > 0"):
        Stage1Config.resolve("smoke", loss="kd")


@pytest.mark.parametrize("loss", ["ce", "tinybert", "minilm"])
def test_stage1_smoke_run_of_each_comparison_loss(tmp_path, corpus, loss):
    m = run_stage1(_cfg(tmp_path, corpus, loss=loss, steps=2, checkpoint_every=2), progress=False)
    assert m["loss"] == loss and m["steps"] == 2 and math.isfinite(m["final_loss"])
    hist = pd.read_csv(tmp_path / "stage1" / "history.csv")
    if loss == "ce":
        assert (hist["loss"] == hist["ce"]).all()
    else:
        assert {"kl", "attention_kl", "hidden_mse" if loss == "tinybert" else "value_kl"} <= set(hist.columns)
    student = load_student(tmp_path / "stage1" / "student")  # the plain model: no projection saved in it
    assert not any("project" in k for k in student.model.state_dict())


def test_stage1_factorized_student_trains_and_records_skipped_attention(tmp_path, corpus):
    m = run_stage1(_cfg(tmp_path, corpus, loss="tinybert", embedding_dim=8, student_heads=4, steps=2,
                        checkpoint_every=2), progress=False)
    assert "attention" in m["feature_terms_skipped"] and m["embedding_dim"] == 8
    assert load_student(tmp_path / "stage1" / "student").model.config.glmd_embedding_dim == 8


def test_zero_steps_saves_the_initialised_student(tmp_path, corpus):
    """Ablation glmd-no-stage1: no training, the student as initialised goes on to stage 2, measured as it is."""
    from glmd_lib.artifacts import is_complete
    from glmd_lib.models.student import build_student
    from glmd_lib.models.teacher import load_teacher

    cfg = _cfg(tmp_path, corpus, steps=0)
    m = run_stage1(cfg, progress=False)
    assert m["steps"] == 0 and m["tokens_seen"] == 0 and math.isfinite(m["valid_kl"])
    assert is_complete(tmp_path / "stage1") and not (tmp_path / "stage1" / "checkpoints").exists()
    teacher = load_teacher(cfg.teacher)[0]
    fresh = build_student(teacher.config, cfg, None, arch=cfg.student_arch, init=cfg.init, teacher=teacher, seed=cfg.seed)
    saved = load_student(tmp_path / "stage1" / "student").model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())


def test_heldout_evaluation_per_block_matches_its_means_and_intervals_resample_blocks(tiny_llama, smol_tokenizer):
    """evaluate(): the per-block values average to the reported figures (blocks are equally long); an interval
    comes from resampling blocks, so a student right on exactly half the blocks gets a wide one (a per-token
    bootstrap of the same 60 tokens would give a narrow one)."""
    from glmd_lib.distill.heldout import _heldout_intervals, evaluate
    from glmd_lib.models.student import build_student

    torch.manual_seed(0)
    blocks = torch.randint(0, len(smol_tokenizer), (6, 12))
    student = build_student(tiny_llama.config, {"layers": 1, "hidden": 32, "heads": 2}, seed=0)
    per = {}
    m = evaluate(student, tiny_llama, None, blocks, 4, 2.0, per_block=per)
    assert len(per["agree"]) == len(per["nll"]) == 6 and m["valid_tokens"] == 72 and m["valid_blocks"] == 6
    with torch.no_grad():
        t_top = tiny_llama(input_ids=blocks).logits.argmax(-1)
        logits = student(input_ids=blocks).logits
    agree = (t_top == logits.argmax(-1)).float().mean()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    assert m["valid_top1_agreement"] == pytest.approx(float(agree)) == pytest.approx(sum(per["agree"]) / 6)
    assert m["valid_student_ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    half = _heldout_intervals({"agree": [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "nll": [1.0] * 6})
    assert half["valid_top1_agreement"] == 0.5
    assert half["valid_top1_agreement_high"] - half["valid_top1_agreement_low"] > 0.5
    assert half["valid_student_ppl_low"] == pytest.approx(math.e) == half["valid_student_ppl_high"]


@pytest.mark.parametrize("loss", ["tinybert", "minilm"])
def test_feature_losses_train_from_the_teacher_cache_as_from_the_live_teacher(tmp_path, corpus, loss):
    """Student heads 4, teacher heads 2: no attention term, so the teacher's layers (TinyBERT) or last values
    (MiniLM) come from the cache and its body never runs; the student ends where the live run does (fp16-rounded
    targets). With equal head counts the attention term needs the live teacher: no cache is built."""
    from safetensors.torch import load_file

    def weights(name, **kw):
        m = run_stage1(_cfg(tmp_path / name, corpus, loss=loss, student_heads=4, steps=4, lr=3e-3, **kw),
                       progress=False)
        sd = load_file(tmp_path / name / "stage1" / "student" / "model.safetensors")
        return m, torch.cat([sd[k].flatten().float() for k in sorted(sd)])

    _, live = weights("live")
    m, cached = weights("cached", teacher_cache=True, cache_dir=str(tmp_path / "caches"))
    assert "attention" in m["feature_terms_skipped"]
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "caches").glob("*/meta.json")]
    (key,) = [k for k in keys if "layers" in k or "values" in k]  # + the held-out blocks' plain hidden cache
    assert key["layers" if loss == "tinybert" else "values"] == ([0, 2] if loss == "tinybert" else 32)
    assert float((cached - live).norm() / live.norm()) < 1e-3
    run_stage1(_cfg(tmp_path / "same", corpus, loss=loss, student_heads=2, steps=1, teacher_cache=True,
                    checkpoint_every=1), progress=False)
    assert not (tmp_path / "same" / "stage1" / "teacher_cache").exists()
