"""Real checkpoints as cells (``level: checkpoint``): load, describe, and say which kernels run.

The zoo and the ``hf_*`` entries answer "how fast is this mixer"; users also ask "how fast and
how good is *this model* against *that one*". A checkpoint cell names a model (``model:``, a
local directory or a Hugging Face hub id), loads it with ``AutoModelForCausalLM.from_pretrained``
in the cell's dtype on the cell's device, and measures it with the same timer, modes and
memory probes as every other cell (``archbench.bench``); ``archbench.quality`` scores the same
model (bits per byte, lm-evaluation-harness tasks).

A slow row must say why, so the row records what transformers chose for each mixer:
``implementations`` lists, per mixer class, the layers that use it and the path it takes —
the attention implementation (``sdpa``, ``eager``, ``flash_attention_2``, ...), or, for the
linear-time mixers, each kernel-backed function and whether it runs Hugging Face hub kernels
(``kernels``), the original package (``mamba_ssm``, ``causal_conv1d``, ``fla``) or transformers'
torch fallback. transformers makes that choice per function when it imports the model file
(``integrations.hub_kernels.use_kernel_func_from_hub_with_fallback``: hub kernel if the model
was kernelized, else the package where it is importable and supports the input's device, else
torch); the detector reads the same facts from the wrapped functions, so the row reports the
path the forward pass takes, not a guess from what is installed.

Bad input gives one line and the sweep goes on (``CheckpointError``, an ``unsupported`` row):
a path that does not exist, a directory without ``config.json``, an architecture this
transformers does not know, a hub id where the hub cannot be reached (pass a local path), a
missing tokenizer where a quality mode needs one. A checkpoint larger than the free memory of
the device is refused before loading with a ``MemoryError`` (an ``oom`` row), rather than
left to the operating system's OOM killer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from archbench.hf_paths import cache_bytes, implementations, summary  # noqa: F401 (callers read them here too)
from archbench.spec import Unsupported

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}

# model_type -> taxonomy family (as the registry's entries), so the report groups real models with the zoo
FAMILIES = {
    "llama": "full/softmax", "qwen2": "full/softmax", "qwen3": "full/softmax", "mistral": "full/softmax",
    "gpt2": "full/softmax", "gpt_neox": "full/softmax", "smollm3": "full/softmax", "gemma": "full/softmax",
    "gemma2": "full/softmax", "phi3": "full/softmax", "olmo": "full/softmax", "olmo2": "full/softmax",
    "mamba": "ssm/selective", "mamba2": "ssm/ssd", "rwkv": "rnn/rwkv", "jamba": "hybrid/inter-layer",
    "bamba": "hybrid/inter-layer", "zamba": "hybrid/inter-layer", "zamba2": "hybrid/inter-layer",
    "granitemoehybrid": "hybrid/inter-layer", "lfm2": "hybrid/inter-layer", "qwen3_next": "hybrid/inter-layer",
    "kimi_linear": "hybrid/inter-layer", "falcon_h1": "hybrid/intra-layer", "falcon_mamba": "ssm/selective",
}  # fmt: skip


class CheckpointError(Unsupported):
    """A checkpoint that cannot be loaded or scored here; the message is one line that says what to do."""


def source_of(model: str) -> tuple[str, bool]:
    """``(source, is_local)``: an existing directory, or a hub id (``ORG/NAME``). A path that is
    neither fails with one line."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise CheckpointError(f"model {model!r} is a file; name the checkpoint's directory (the one holding config.json)")
    if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return model, False
    raise CheckpointError(f"model {model!r}: no such directory, and not a hub id (ORG/NAME); pass a local checkpoint directory")


def _offline_line(model: str, reason: str) -> CheckpointError:
    return CheckpointError(
        f"model {model!r} is not a local directory and the Hugging Face hub cannot serve it ({reason}); "
        f"download it where there is a network (hf download {model} --local-dir DIR) and pass the local path"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def load_config(model: str, trust_remote_code: bool = False):
    """The checkpoint's ``PretrainedConfig``, with one-line errors for each way it can be missing."""
    from transformers import AutoConfig

    source, local = source_of(model)
    if local and not (Path(source) / "config.json").is_file():
        raise CheckpointError(f"model {model!r}: the directory has no config.json; save the model there with "
                              "model.save_pretrained(DIR) or point at the directory that holds config.json")  # fmt: skip
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as e:
        text = _first_line(e)
        if "trust_remote_code" in text:
            raise CheckpointError(f"model {model!r} ships its own code; set trust_remote_code: true in the suite "
                                  "if you trust it") from None  # fmt: skip
        model_type = _model_type(source) if local else None
        if model_type is not None or "model type" in text or "Unrecognized" in text:
            import transformers

            raise CheckpointError(f"model {model!r}: transformers {transformers.__version__} does not know architecture "
                                  f"{model_type or '?'!r} ({text}); upgrade transformers or set trust_remote_code: true "
                                  "if the checkpoint ships its code") from None  # fmt: skip
        raise CheckpointError(f"model {model!r}: bad config ({text})") from None
    except OSError as e:
        if local:
            raise CheckpointError(f"model {model!r}: cannot read config.json ({_first_line(e)})") from None
        raise _offline_line(model, _first_line(e)) from None


def _model_type(directory: str) -> str | None:
    try:
        return json.loads((Path(directory) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def weight_bytes(directory: str | Path, config=None, dtype: str | None = None) -> int | None:
    """Bytes the weights take in ``dtype`` (as stored when None): the weight files' sizes, scaled
    from the stored dtype; None when the directory holds no weight files (a hub id)."""
    files = [p for p in Path(directory).glob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    if not files:
        return None
    stored = sum(p.stat().st_size for p in files)
    stored_dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    stored_dtype = stored_dtype.removeprefix("torch.")
    if dtype is None or stored_dtype not in DTYPE_BYTES:
        return stored
    return int(stored * DTYPE_BYTES[dtype] / DTYPE_BYTES[stored_dtype])


def free_bytes(device: str) -> int | None:
    """Memory a new model can take on ``device``: free GPU memory, or the host's available memory."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return int(torch.cuda.mem_get_info(index)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(model: str, need: int | None, device: str, headroom: float = 1.1) -> None:
    """A ``MemoryError`` (an ``oom`` row) when the weights alone exceed what ``device`` has free."""
    have = free_bytes(device)
    if need is not None and have is not None and need * headroom > have:
        raise MemoryError(f"out of memory: model {model!r} needs {need / 2**30:.2f} GiB for its weights and {device} has "
                          f"{have / 2**30:.2f} GiB free; use a smaller model, a 16-bit dtype or a larger device")  # fmt: skip


def load_model(model: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
               attn_implementation: str | None = None) -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """``AutoModelForCausalLM.from_pretrained`` on ``device`` in ``dtype``; returns (model in eval
    mode, facts for the row: source, architecture, model type, family, params, remote code)."""
    from transformers import AutoModelForCausalLM

    config = load_config(model, trust_remote_code)
    source, local = source_of(model)
    if local:
        check_fits(model, weight_bytes(source, config, dtype), device)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        lm = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as e:
        raise CheckpointError(f"model {model!r}: transformers cannot build a causal LM from it ({_first_line(e)})") from None
    except OSError as e:
        if local:
            raise CheckpointError(f"model {model!r}: cannot load its weights ({_first_line(e)}); the directory needs "
                                  "the files model.save_pretrained(DIR) writes") from None  # fmt: skip
        raise _offline_line(model, _first_line(e)) from None
    lm = lm.to(device).eval()
    return lm, describe(lm, model, trust_remote_code)


ATTN_BACKENDS = {"transformers": None, "sdpa": "sdpa", "eager": "eager"}  # the checkpoint entry's backends


def build(cell: dict):
    """The model a ``level: checkpoint`` cell names, behind archbench's model interface
    (``hf.HFCausalLM``: forward, prefill, step over the model's own cache), with its facts."""
    from archbench.hf import HFCausalLM, measured_state

    lm, facts = load_model(cell["model"], cell["device"], cell["dtype"], bool(cell.get("trust_remote_code")),
                           ATTN_BACKENDS.get(cell["backend"]))  # fmt: skip
    module = HFCausalLM(lm, measured_state(lm))
    module.facts = facts
    module.vocab_size = facts["model_vocab_size"]
    return module


def describe(lm: torch.nn.Module, model: str, trust_remote_code: bool = False) -> dict:
    """What a checkpoint row records about the model (architecture, parameters, embeddings)."""
    config = lm.config
    params = sum(p.numel() for p in lm.parameters())  # tied weights are one Parameter: counted once
    embed = lm.get_input_embeddings()
    embed_params = embed.weight.numel() if embed is not None else 0
    head = lm.get_output_embeddings()
    tied = head is not None and embed is not None and head.weight is embed.weight
    return {
        "model": model,
        "model_architecture": (getattr(config, "architectures", None) or [type(lm).__name__])[0],
        "model_type": config.model_type,
        "family": FAMILIES.get(config.model_type, "checkpoint/" + config.model_type),
        "params": params,
        "params_non_embedding": params - embed_params - (0 if tied or head is None else head.weight.numel()),
        "tied_embeddings": tied,
        "model_vocab_size": int(config.vocab_size),
        "model_layers": getattr(config, "num_hidden_layers", None),
        "model_hidden_size": getattr(config, "hidden_size", None),
        "trust_remote_code": bool(trust_remote_code),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def load_tokenizer(model: str, vocab_size: int | None = None):
    """The checkpoint's tokenizer, or None for a byte-level model (vocabulary 256) saved without one."""
    from transformers import AutoTokenizer

    source, local = source_of(model)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        if vocab_size == 256:
            return None
        if not local:
            raise _offline_line(model, _first_line(e)) from None
        raise CheckpointError(f"model {model!r}: no tokenizer loads from the directory ({_first_line(e)}); save it "
                              "with tokenizer.save_pretrained(DIR) next to the weights") from None  # fmt: skip
