"""The base model, its tokenizer, the device, and the LoRA adapter around it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from daemon.core import auto
from daemon.core.auto import Machine
from daemon.core.gpus import under_torchrun
from daemon.trainer.config import RunError, TrainOptions


@dataclass(frozen=True)
class Device:
    """Where training runs and in which precision.

    `cuda` with bf16 when the GPU computes in bf16 natively; fp16 mixed precision on a GPU that only emulates bf16
    (T4, V100: the frozen base in fp16, the LoRA weights in fp32 for the gradient scaler); `cpu` in fp32.
    """

    kind: str
    name: str
    bf16: bool
    fp16: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the frozen base model is loaded in (peft keeps the LoRA weights in fp32 either way)."""
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32

    @property
    def label(self) -> str:
        return f"{self.kind} ({self.name}, {'bf16' if self.bf16 else 'fp16' if self.fp16 else 'fp32'})"


def pick_device() -> Device:
    """The one CUDA GPU this process sees (under torchrun: cuda:LOCAL_RANK of those it sees), else the CPU when
    that is what the user chose or all there is.

    A RunError instead of a silent fallback: several GPUs outside torchrun (the Trainer would wrap the model in
    nn.DataParallel), or a driver that shows a GPU to a torch build that cannot use it (a night of CPU training).
    """
    if torch.cuda.is_available():
        if torch.cuda.device_count() > 1 and not under_torchrun(os.environ):
            raise RunError(f"this trainer sees {torch.cuda.device_count()} GPUs (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}), and one process never trains on "
                           f"several (the Trainer would fall back to nn.DataParallel). Fix: let the daemon start the "
                           f"run (it gives each run one GPU; `gpus` in overnight.toml chooses which), or set "
                           f"CUDA_VISIBLE_DEVICES to one GPU.")
        index = 0
        if under_torchrun(os.environ):  # one GPU per rank: cuda:LOCAL_RANK (DDP, never DataParallel)
            index = int(os.environ.get("LOCAL_RANK", "0") or 0)
            if index >= torch.cuda.device_count():
                raise RunError(f"torchrun started local rank {index}, but this process sees "
                               f"{torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES="
                               f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). Fix: start at most one "
                               f"process per visible GPU (nproc_per_node in [torchrun], or gpus in overnight.toml).")
            torch.cuda.set_device(index)
        # is_bf16_supported() alone says True on a T4/V100, where bf16 is emulated and many times slower
        native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return Device("cuda", torch.cuda.get_device_name(index), bf16=native_bf16, fp16=not native_bf16)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return Device("cpu", _cpu_name(), False)  # the GPUs were hidden on purpose: the CPU was chosen
    gpus = _driver_gpus()
    if gpus:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise RunError(f"{gpus}, but this torch ({torch.__version__}, {build}) cannot use a GPU"
                       f"{f' (CUDA_VISIBLE_DEVICES={visible})' if visible is not None else ''}, so the run would "
                       f"train on the CPU for hours. Fix: install the torch build for your CUDA (pip install torch "
                       f"--index-url https://download.pytorch.org/whl/cu124), check that nvidia-smi lists the GPU "
                       f"and that `gpus` in overnight.toml names one it lists; to train on the CPU on purpose, start "
                       f"the daemon with CUDA_VISIBLE_DEVICES=\"\".")
    return Device("cpu", _cpu_name(), False)


def _driver_gpus() -> str | None:
    """What the NVIDIA driver shows ("the NVIDIA driver shows 2 GPU(s)"), or None when it shows none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        if count > 0:
            return f"the NVIDIA driver shows {count} GPU(s)"
    except Exception:  # noqa: BLE001 - no pynvml, no driver library, no device: nothing shows a GPU here
        pass
    return "a GPU device file exists (/dev/nvidia0)" if os.path.exists("/dev/nvidia0") else None


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _load_failed(what: str, source: str, error: Exception, trust_remote_code: bool) -> RunError:
    """Why a base model's part did not load, with the fix: custom code the owner has not trusted, or a bad folder."""
    if not trust_remote_code and "trust_remote_code" in str(error):
        return RunError(f"cannot load {what} {source}: it ships custom code (its own Python files, auto_map in its "
                        f"config), which runs only when the machine owner trusts it. Fix: if you trust that code, set "
                        f"trust_remote_code = true in overnight.toml (owner-only, never a sidecar), then resume the run.")
    return RunError(f"cannot load {what} {source}: {error}. Fix: check that the folder (or the HF cache entry) is a "
                    f"complete causal-LM download; the trainer never downloads.")


def load_tokenizer(source: str, trust_remote_code: bool) -> Any:
    """The base model's tokenizer, with pad = eos when it has no pad token."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_failed("the tokenizer of base model", source, e, trust_remote_code) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def choose_attention(requested: str, device: Device) -> tuple[str, str]:
    """The attention implementation a run uses, and why (for the console header): daemon.core.auto's rule on this device."""
    import importlib.util

    cuda = device.kind == "cuda"
    machine = Machine(cuda, torch.cuda.get_device_capability()[0] if cuda else None,
                      importlib.util.find_spec("flash_attn") is not None)
    try:
        return auto.attention(requested, machine)
    except ValueError as e:
        raise RunError(str(e)) from None


def quantization_config(quantization: str, device: Device) -> Any:
    """QLoRA's recipe: nf4 with double quantisation and 16-bit compute on a GPU (fp32 on the CPU); or 8-bit."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RunError(f"quantization = \"{quantization}\" needs bitsandbytes, which is not installed. Fix: "
                       f"pip install 'overnight[gpu]' (or pip install bitsandbytes), then resume the run.") from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=device.dtype)


def load_model(source: str, device: Device, opts: TrainOptions, attention: str) -> Any:
    """The base causal LM in the device's dtype (bf16/fp16 on a GPU, fp32 on the CPU), quantised when asked."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": device.dtype, "attn_implementation": attention}
    if opts.quantization != "none":
        kwargs["quantization_config"] = quantization_config(opts.quantization, device)
        # bitsandbytes quantises while loading, onto the device the weights will live on
        kwargs["device_map"] = {"": torch.cuda.current_device()} if device.kind == "cuda" else "cpu"
    try:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True,
                                                     trust_remote_code=opts.trust_remote_code, **kwargs)
    except (OSError, ValueError, ImportError, SafetensorError) as e:  # a damaged weights file is the user's to fix
        raise _load_failed("base model", source, e, opts.trust_remote_code) from None
    if opts.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # norms and embeddings to fp32, inputs requiring grad; checkpointing is the Trainer's to switch on
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if device.kind == "cpu":
            _keep_trainable_layout(model)
    return model


def _keep_trainable_layout(model: Any) -> None:
    """bitsandbytes repacks a 4-bit layer's weight for a faster CPU kernel the first time it runs without grad (an
    evolution snapshot, an eval), for good: that kernel has no backward, and with a bias the next training step fails
    ("a view of a leaf Variable ... in-place"). A training run keeps the trainable layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def add_template_tokens(tokenizer: Any, chat: Any) -> list[int]:
    """Add the special tokens the chat template writes and the tokenizer lacks (ChatML's <|im_start|> and <|im_end|>
    on a base model); their ids, whose embeddings the run then trains."""
    from tokenizers import AddedToken

    from daemon.core.as_trained import missing_specials

    missing = missing_specials(tokenizer.backend_tokenizer, chat)
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return [tokenizer.convert_tokens_to_ids(t) for t in missing]


def fit_embeddings(model: Any, tokenizer: Any) -> None:
    """Rows for the tokens added to the tokenizer (initialised to the mean of the others)."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)


def add_lora(model: Any, opts: TrainOptions, new_tokens: list[int] | None = None) -> Any:
    """Wrap the model with a fresh LoRA adapter.

    The seed is set right before: LoRA's A matrices are drawn from the global RNG here, and exact resume
    (FINDINGS.md) needs them identical in the first run and in every resumed one.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    targets = opts.lora_targets
    # tokens the chat template added: their embedding rows train too, and the adapter carries them
    config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM",
                        trainable_token_indices=list(new_tokens) if new_tokens else None)
    set_seed(opts.seed)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise RunError(f"lora_targets = {targets!r} does not fit this model: {e}. Fix: use \"all-linear\" or "
                       f"names of the model's linear layers (e.g. [\"q_proj\", \"v_proj\"]).") from None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # the KV cache is for generation; training never reuses it
    _head_reads_like_linear(peft_model)
    return peft_model


def _head_reads_like_linear(model: Any) -> None:
    """A tied LM head whose new tokens' rows train is peft's TrainableTokensWrapper: its `weight` is the merged one,
    but it has no `bias`, which TRL's fused log-prob head (DPO, KTO) reads beside it. Give it its Linear's."""
    head = model.get_output_embeddings()
    if head is not None and type(head).__name__ == "TrainableTokensWrapper" and "bias" not in vars(head):
        object.__setattr__(head, "bias", getattr(head.token_adapter.base_layer, "bias", None))


def continue_lora(model: Any, folder: Path, opts: TrainOptions) -> Any:
    """Wrap the model with an existing adapter, trainable (its own rank, alpha and targets apply)."""
    from peft import PeftModel
    from transformers import set_seed

    set_seed(opts.seed)  # LoRA dropout draws from the global RNG: seeded as for a fresh adapter
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise RunError(f"cannot load the adapter to continue from ({folder}): {e}. Fix: continue from another "
                       f"version, or remove init_adapter to train a fresh adapter.") from None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False
    _head_reads_like_linear(peft_model)
    return peft_model


def trainable_summary(model: Any) -> str:
    """`trainable N of M parameters (x%)`."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
