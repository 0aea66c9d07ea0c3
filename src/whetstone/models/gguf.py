"""GGUF files for on-device runtimes (llama.cpp, Ollama, LM Studio): writing them, reading
them back, and answering with llama.cpp.

Writing runs llama.cpp's own converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`),
the maintained code that knows each architecture's tensor layout, tokenizer and chat
template; `scripts/ondevice.sh --converters` puts the ones of the pinned llama-cpp-python
release in Whetstone's cache (a download, no build). q4_k_m is made from the f16 file by
llama.cpp's quantizer, which needs the runtime.

The runtime is llama-cpp-python (`pip install whetstone[ondevice]`, built by
`scripts/ondevice.sh`): a C++ build, so it is optional. Without it a GGUF file is read back
with an independent reader instead (transformers' GGUF loader, on the `gguf` package) and
its logits compared with the PyTorch model's (`logits_check`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, NotFound, WhetstoneError
from whetstone.models.decoding import Decoder
from whetstone.models.generate import Generation, encode_prompts

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import Tokenizer

# The llama-cpp-python release whose vendored llama.cpp converters and runtime are used
# together: a GGUF file written by one llama.cpp and read by another may differ.
LLAMA_CPP_PYTHON = "0.3.36"
QUANTS = ("f16", "q8_0", "q4_k_m")
SETUP = "bash scripts/ondevice.sh"
# The converter writes these types itself; the others come from llama.cpp's quantizer.
_CONVERTER_TYPES = ("f16", "q8_0")
_CONTEXT = 4096


def converters_dir() -> Path:
    """Where llama.cpp's converter scripts are: $WHETSTONE_LLAMA_CPP, else Whetstone's cache."""
    from whetstone.models.base import cache_root

    env = os.environ.get("WHETSTONE_LLAMA_CPP")
    folder = Path(env) if env else cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON
    if not (folder / "convert_hf_to_gguf.py").exists():
        raise NotFound(
            f"llama.cpp's GGUF converters are not in {folder}: run `{SETUP} --converters` "
            "(a download of the llama-cpp-python source, no build)"
        )
    return folder


def runtime_missing() -> str | None:
    """Why llama.cpp cannot run here (one line), or None when llama-cpp-python is installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed (`{SETUP}` builds it)"
    return None


def _convert(script: str, args: Sequence[str]) -> None:
    """Run one of llama.cpp's converters; its last lines of output become the error."""
    folder = converters_dir()
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the converter uses the gguf-py it was released with
    done = subprocess.run(
        [sys.executable, str(folder / script), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise WhetstoneError(f"llama.cpp's {script} failed: {tail}")


def write_model(hf_dir: Path, out: Path, quant: str = "f16") -> Path:
    """The Hugging Face model folder `hf_dir` (weights, tokenizer, chat template) as one GGUF
    file `out` of type `quant`."""
    if quant not in QUANTS:
        raise InvalidInput(f"unknown GGUF type {quant!r} (choose from {', '.join(QUANTS)})")
    if quant in _CONVERTER_TYPES:
        _convert("convert_hf_to_gguf.py", [str(hf_dir), "--outfile", str(out), "--outtype", quant])
        return out
    missing = runtime_missing()
    if missing:
        raise InvalidInput(f"--quant {quant} is made by llama.cpp's quantizer: {missing}")
    f16 = out.with_name(out.name + ".f16.tmp")
    try:
        write_model(hf_dir, f16, "f16")
        quantize(f16, out, quant)
    finally:
        f16.unlink(missing_ok=True)
    return out


def quantize(src: Path, out: Path, quant: str) -> None:
    """llama.cpp's quantizer (`llama-quantize`), through llama-cpp-python."""
    import ctypes

    import llama_cpp

    ftype = {
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    }
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype[quant]
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise WhetstoneError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")


def write_lora(adapter_dir: Path, base_hf_dir: Path, out: Path) -> Path:
    """A PEFT LoRA folder as a GGUF LoRA (llama.cpp `--lora`, Ollama `ADAPTER`) for the base
    model in `base_hf_dir`. Kept in f32: it is small, and rounding it would be a second
    source of difference from the trained adapter."""
    _convert(
        "convert_lora_to_gguf.py",
        [str(adapter_dir), "--base", str(base_hf_dir), "--outfile", str(out), "--outtype", "f32"],
    )
    return out


# ---------------------------------------------------------------- reading back


def read_back(path: Path) -> PreTrainedModel:
    """The GGUF model at `path` as a PyTorch model in fp32, read by transformers' GGUF loader
    (an implementation independent of llama.cpp's)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def read_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer (with its chat template) stored in the GGUF file at `path`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@dataclass
class LogitsCheck:
    prompts: int
    positions: int
    top1_agree: int  # positions where both models' most likely next token is the same
    max_abs_diff: float  # the largest logit difference over every position and token
    same_tokens: int  # prompts the GGUF's own tokenizer tokenizes exactly as the model's

    @property
    def top1_differ_pct(self) -> float:
        return 100.0 * (self.positions - self.top1_agree) / max(self.positions, 1)


def logits_check(
    path: Path,
    reference: PreTrainedModel,
    tok: Tokenizer,
    chats: list[list[dict[str, str]]],
    *,
    lora: Path | None = None,
) -> LogitsCheck:
    """Run each chat's prompt through the GGUF file and through `reference` (the merged
    PyTorch model) and compare their logits at every position; and count the prompts the
    file's own tokenizer and chat template turn into the same tokens. The file runs in
    llama.cpp where it is installed (the only reader of a `lora` over it), else it is read
    back by transformers (`read_back`)."""
    import numpy as np
    import torch

    prompts = encode_prompts(tok, chats)
    if runtime_missing() is None:
        # Every position's logits are kept: a context just long enough keeps that small.
        rt = LlamaCpp(path, lora=lora, logits_all=True, n_ctx=max(map(len, prompts)) + 64)
        theirs = [rt.prompt_ids(c) for c in chats]
        run = rt.logits
    else:
        if lora is not None:
            raise InvalidInput(
                f"reading the LoRA {lora.name} back needs llama.cpp: {runtime_missing()}"
            )
        gguf_model = read_back(path)
        theirs = encode_prompts(read_tokenizer(path), chats)

        def run(ids: list[int]) -> Any:
            with torch.inference_mode():
                return gguf_model(torch.tensor([ids])).logits[0].numpy()

    ref = reference.float().eval()
    agree = positions = 0
    worst = 0.0
    for ids in prompts:
        with torch.inference_mode():
            b = ref(torch.tensor([ids], device=ref.device)).logits[0].cpu().numpy()
        a = np.asarray(run(ids), dtype=np.float32)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += len(ids)
        worst = max(worst, float(np.abs(a - b).max()))
    same = sum(1 for a, b in zip(theirs, prompts, strict=True) if list(a) == list(b))
    return LogitsCheck(len(prompts), positions, agree, worst, same)


@dataclass
class LoraCheck:
    pairs: int  # LoRA (A, B) pairs in the GGUF file
    expected: int  # in the PEFT adapter
    max_rel_diff: float  # the largest relative difference of the sorted norms of B·A


def lora_check(path: Path, adapter_dir: Path) -> LoraCheck:
    """The GGUF LoRA at `path` read back by the `gguf` package against the PEFT adapter it
    came from: as many (A, B) pairs, and the same norm of each update B·A. The norms are
    compared sorted, as a multiset: they are blind to the converter's renaming of tensors and
    its reordering of rows (llama.cpp permutes the query and key rows of Llama models)."""
    import numpy as np
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    tensors = {t.name: np.asarray(t.data, dtype=np.float64) for t in GGUFReader(str(path)).tensors}
    ours = _update_norms(tensors, ".lora_a", ".lora_b")
    weights = {
        k: v.astype(np.float64)
        for k, v in load_file(adapter_dir / "adapter_model.safetensors").items()
    }
    theirs = _update_norms(weights, ".lora_A.weight", ".lora_B.weight")
    if len(ours) != len(theirs) or not ours:
        return LoraCheck(len(ours), len(theirs), float("inf"))
    a, b = np.sort(ours), np.sort(theirs)
    return LoraCheck(len(ours), len(theirs), float((np.abs(a - b) / np.maximum(b, 1e-12)).max()))


def _update_norms(tensors: dict[str, Any], a_suffix: str, b_suffix: str) -> list[float]:
    """‖B·A‖ (Frobenius) of each LoRA pair, A of shape (rank, in) and B of (out, rank)
    whichever way round a file stores them."""
    import numpy as np

    norms = []
    for name, a in tensors.items():
        if not name.endswith(a_suffix):
            continue
        b = tensors.get(name[: -len(a_suffix)] + b_suffix)
        if b is None:
            continue
        a = a if a.shape[0] <= a.shape[1] else a.T
        b = b if b.shape[1] <= b.shape[0] else b.T
        norms.append(float(np.linalg.norm(b @ a)))
    return norms


# ---------------------------------------------------------------- the llama.cpp runtime


class _Detokenizer:
    """What `models.decoding.Decoder` needs of a tokenizer, done by llama.cpp's own."""

    def __init__(self, runtime: LlamaCpp):
        self.runtime = runtime

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raw = self.runtime.llm.detokenize(list(ids), special=not skip_special_tokens)
        return bytes(raw).decode("utf-8", errors="replace")

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        """Token ids of each text (what `answer_budget` counts answers in)."""
        llm = self.runtime.llm
        return {"input_ids": [llm.tokenize(t.encode(), add_bos=add_special_tokens) for t in texts]}


class LlamaCpp:
    """A GGUF model (optionally with a GGUF LoRA over it) in llama.cpp, answering chats the
    way llama.cpp's users get them: the prompt rendered with the chat template stored in the
    file and tokenized by the file's tokenizer, an answer ending at the first token llama.cpp
    calls an end of generation, greedy decoding."""

    def __init__(
        self,
        path: Path,
        *,
        lora: Path | None = None,
        n_ctx: int = _CONTEXT,
        threads: int | None = None,
        logits_all: bool = False,
    ):
        missing = runtime_missing()
        if missing:
            raise InvalidInput(f"running {path.name} needs llama.cpp: {missing}")
        if not path.is_file():
            raise NotFound(f"no GGUF file at {path}")
        from llama_cpp import Llama

        self.path = path
        self.llm = Llama(
            model_path=str(path),
            lora_path=str(lora) if lora else None,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            logits_all=logits_all,
            seed=0,
            verbose=False,
        )
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self.tokenizer = _Detokenizer(self)
        self.decoder = Decoder(self.tokenizer, frozenset())  # type: ignore[arg-type]

    @property
    def chat_template(self) -> str:
        tmpl = self.metadata.get("tokenizer.chat_template")
        if not tmpl:
            raise InvalidInput(f"{self.path} has no chat template (tokenizer.chat_template)")
        return tmpl

    def _piece(self, token: int) -> str:
        return bytes(self.llm._model.token_to_piece(token, special=True)).decode(errors="replace")

    def prompt_ids(self, chat: list[dict[str, str]]) -> list[int]:
        from transformers.utils.chat_template_utils import render_jinja_template

        # transformers types the result as text; it is (texts, generation indices).
        out: Any = render_jinja_template(
            conversations=[chat],
            chat_template=self.chat_template,
            add_generation_prompt=True,
            bos_token=self._piece(self.llm.token_bos()),
            eos_token=self._piece(self.llm.token_eos()),
        )
        text = str(out[0][0])
        add_bos = bool(self.llm._model.add_bos_token())
        # A template that writes the BOS itself must not get a second one.
        if add_bos and text.startswith(self._piece(self.llm.token_bos())):
            add_bos = False
        return list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True))

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def _last_logits(self) -> Any:
        import llama_cpp
        import numpy as np

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).astype(np.float64)

    def _feed(self, ids: list[int]) -> None:
        """Evaluate `ids` after the longest prefix already in the cache (every prompt of a
        task starts with the same system turn, so most of it is computed once)."""
        llm = self.llm
        keep = 0
        cached = llm.input_ids[: llm.n_tokens]
        while keep < min(len(cached), len(ids) - 1) and cached[keep] == ids[keep]:
            keep += 1
        llm.n_tokens = keep  # eval() drops the cache past n_tokens
        llm.eval(ids[keep:])

    def greedy(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        """The greedy answer after prompt `ids`: its tokens (end included) and log-probs."""
        import numpy as np

        if len(ids) + max_new_tokens > self.llm.n_ctx():
            raise InvalidInput(
                f"a prompt of {len(ids)} tokens and {max_new_tokens} new ones do not fit "
                f"llama.cpp's context of {self.llm.n_ctx()}"
            )
        self._feed(ids)
        tokens: list[int] = []
        logps: list[float] = []
        while len(tokens) < max_new_tokens:
            logits = self._last_logits()
            t = int(np.argmax(logits))
            top = logits.max()
            logps.append(float(logits[t] - top - np.log(np.exp(logits - top).sum())))
            tokens.append(t)
            if self.is_end(t) or len(tokens) >= max_new_tokens:
                break
            self.llm.eval([t])
        return tokens, logps

    def answer(
        self,
        chats: list[list[dict[str, str]]],
        *,
        max_new_tokens: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Greedy answers, one chat at a time (llama.cpp on a device answers one user)."""
        out = []
        for chat in chats:
            t0 = time.perf_counter()
            tokens, logps = self.greedy(self.prompt_ids(chat), max_new_tokens)
            ended = tokens[:-1] if tokens and self.is_end(tokens[-1]) else tokens
            out.append(
                Generation(
                    text=self.decoder.answer(ended).text.strip(),
                    confidence=sum(logps) / len(logps) if logps else 0.0,
                    output_tokens=len(tokens),
                    latency_ms=(time.perf_counter() - t0) * 1000,
                )
            )
            if on_batch is not None:
                on_batch(1)
        return out

    def logits(self, ids: list[int]) -> Any:
        """Every position's logits for `ids` (needs `logits_all=True`), as a numpy array."""
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[: len(ids)].copy()


# ---------------------------------------------------------------- Ollama's Modelfile


@dataclass
class ChatFormat:
    """A chat template as the text around each message by role, and the text that opens
    the answer: the form other engines' template languages (Ollama's Go templates) need."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str

    def render(self, chat: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        body = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in chat)
        return body + (self.generation if add_generation_prompt else "")

    def go_template(self) -> str:
        """The same format as an Ollama TEMPLATE (Go text/template over `.Messages`, where
        Ollama puts the Modelfile's SYSTEM first when a request has none)."""
        branches = "{{ else if ".join(
            f'eq .Role "{role}" }}}}{self.prefix[role]}{{{{ .Content }}}}{self.suffix[role]}'
            for role in self.prefix
        )
        return f"{{{{ range .Messages }}}}{{{{ if {branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


_SENTINEL = {
    "system": "WHETSTONE-SYSTEM-7",
    "user": "WHETSTONE-USER-7",
    "assistant": "WHETSTONE-ANSWER-7",
}


def chat_format(tok: Tokenizer) -> ChatFormat:
    """Read `tok`'s chat template as a `ChatFormat`, by rendering chats of sentinel texts
    and cutting between them. Refuses (one line) a template that is not text around each
    message, checked by re-rendering a longer chat both ways."""

    def render(roles: list[str], gen: bool = False) -> str:
        msgs = [{"role": r, "content": _SENTINEL[r]} for r in roles]
        return str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))

    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {}
    done = ""
    roles = ["system", "user", "assistant"]
    for i, role in enumerate(roles):
        text = render(roles[: i + 1])
        at = text.find(_SENTINEL[role], len(done))
        if not text.startswith(done) or at < 0:
            raise InvalidInput(_NOT_PER_MESSAGE)
        prefix[role] = text[len(done) : at]
        suffix[role] = text[at + len(_SENTINEL[role]) :]
        done = text
    with_user = render(roles[:2])
    fmt = ChatFormat(prefix, suffix, render(roles[:2], gen=True)[len(with_user) :])
    longer = [{"role": r, "content": _SENTINEL[r]} for r in ["system", "user", "assistant", "user"]]
    want = str(tok.apply_chat_template(longer, tokenize=False, add_generation_prompt=True))
    if fmt.render(longer) != want:
        raise InvalidInput(_NOT_PER_MESSAGE)
    return fmt


_NOT_PER_MESSAGE = (
    "the model's chat template is not plain text around each message, so Whetstone cannot "
    "write it as an Ollama template"
)


def stop_strings(tok: Tokenizer, eos_ids: Sequence[int], fmt: ChatFormat) -> list[str]:
    """The texts that end an answer: the end-of-turn tokens and what closes an assistant turn."""
    ids = {i for i in [tok.eos_token_id, *eos_ids] if i is not None}
    stops = [str(tok.convert_ids_to_tokens(int(i))) for i in sorted(ids)]
    closing = fmt.suffix["assistant"].strip()
    if closing and closing not in stops:
        stops.append(closing)
    return stops


def modelfile(gguf_name: str, fmt: ChatFormat, stops: list[str], system: str) -> str:
    """An Ollama Modelfile for the GGUF file beside it: the chat template, the stop strings,
    the task's instruction as the system prompt, and greedy decoding (Ollama's default
    repeat penalty of 1.1 would change answers, so it is turned off)."""
    quoted = system.replace('"""', '\\"\\"\\"')
    lines = [
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{fmt.go_template()}"""',
        f'SYSTEM """{quoted}"""',
        *(f"PARAMETER stop {_quote(s)}" for s in stops),
        "PARAMETER temperature 0",
        "PARAMETER top_k 1",
        "PARAMETER repeat_penalty 1",
        "",
    ]
    return "\n".join(lines)


def _quote(s: str) -> str:
    import json

    return json.dumps(s)
