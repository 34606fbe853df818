import time

import pytest
import torch

from glmd_lib.device import autocast, get_device
from glmd_lib.models.teacher import ModelLoadError, count_parameters, load_teacher, load_tokenizer, model_kind


def test_local_causal_and_masked_folders(tmp_path, tiny_llama, smol_tokenizer, tiny_bert, bert_tokenizer):
    tiny_llama.save_pretrained(tmp_path / "llama")
    smol_tokenizer.save_pretrained(tmp_path / "llama")
    model, tok = load_teacher(tmp_path / "llama")
    assert model_kind(model.config) == "causal" and not model.training
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, tiny_llama(**ids).logits)

    tiny_bert.save_pretrained(tmp_path / "bert")
    bert_tokenizer.save_pretrained(tmp_path / "bert")
    model, tok = load_teacher(tmp_path / "bert")
    assert model_kind(model.config) == "masked" and tok.mask_token is not None


def test_hub_id_offline_says_how_to_pass_a_local_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local folder"):
        load_teacher("someone/not-a-cached-model")


def test_missing_folder_and_file_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_teacher(str(tmp_path / "nope") + "/")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_teacher(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_teacher(tmp_path / "empty")


def test_tied_parameters_counted_once(tiny_llama):
    assert tiny_llama.config.tie_word_embeddings
    naive = sum(p.numel() for p in tiny_llama.parameters())
    assert count_parameters(tiny_llama) == naive  # .parameters() already de-duplicates ties
    emb = tiny_llama.get_input_embeddings().weight.numel()
    assert count_parameters(tiny_llama) < naive + emb


def test_device_selection():
    assert get_device("cpu").type == "cpu"
    assert get_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            get_device("cuda")
    with autocast(torch.device("cpu")):  # a no-op on CPU
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_tokenizer_special_ids(smol_tokenizer):
    assert len(smol_tokenizer) == 49152
    assert (smol_tokenizer.bos_token_id, smol_tokenizer.eos_token_id, smol_tokenizer.pad_token_id) == (1, 2, 2)


@pytest.mark.slow
def test_smollm2_builtin_predicts_paris_and_loads_fast():
    load_teacher("smollm2-135m")  # converts once if needed
    start = time.perf_counter()
    model, tok = load_teacher("smollm2-135m")
    seconds = time.perf_counter() - start
    assert count_parameters(model) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top3 = model(**ids).logits[0, -1].topk(3).indices.tolist()
    assert " Paris" in [tok.decode([i]) for i in top3]
    print(f"cached load: {seconds:.2f} s")


def test_tiny_random_llama_builtin_is_deterministic():
    a, tok = load_teacher("tiny-random-llama")
    b, _ = load_teacher("tiny-random-llama")
    assert len(tok) == a.config.vocab_size == 49152
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
