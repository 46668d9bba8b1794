"""Corral's PEFT → GGUF LoRA converter against the real thing: a tiny random Llama written both as a
Hugging Face model and as an F32 GGUF with the same weights (tests/llama_twin.py), real PEFT LoRAs made
on it with non-zero weights, and llama.cpp (llama-cpp-python, adapters applied with
llama_adapter_lora_init + llama_set_adapters_lora) computing logits for the same token ids as
transformers + PEFT.

Tolerance: TOL = 1e-4 absolute on every logit of every position. Measured on the development CPU:
2.2e-6 between llama.cpp and transformers (base and adapter alike, with an F32 KV cache; the default F16
cache alone gives 1.6e-3), logits of standard deviation ~0.6, and the adapter moves them by ~1.6.
"""

from __future__ import annotations

import ctypes
import json
import math

import numpy as np
import pytest

pytest.importorskip("peft")
torch = pytest.importorskip("torch")

import llama_cpp  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from adapters.compat import check_adapter_fits  # noqa: E402
from adapters.errors import AdapterError  # noqa: E402
from adapters.peft_to_gguf import convert_for_base, convert_peft_adapter  # noqa: E402
from server.errors import BadRequest  # noqa: E402
from tests.llama_twin import LINEAR_MODULES, load_hf, make_peft_lora, write_tiny_llama  # noqa: E402

TOL = 1e-4
TOKENS = [128000, 791, 6864, 315, 9822, 374, 12366, 13, 578, 4062, 14198, 39935, 35308, 927, 279, 16053]
HF_PROJ = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("twin"), seed=0)


@pytest.fixture(scope="module")
def loras(twin, tmp_path_factory):
    """PEFT folders and their GGUF conversions: {name: (peft dir, gguf path)}."""
    d = tmp_path_factory.mktemp("loras")
    specs = {
        "all": dict(seed=1, r=4, alpha=8),
        "few": dict(seed=2, r=2, alpha=4, target_modules=("q_proj", "v_proj", "down_proj")),
        "rslora": dict(seed=3, r=4, alpha=8, use_rslora=True),
        "patterns": dict(seed=4, r=4, alpha=8, rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3}),
    }
    out = {}
    for name, spec in specs.items():
        folder = make_peft_lora(twin, d / name, **spec)
        gguf_path = d / f"{name}.gguf"
        convert_for_base(folder, gguf_path, twin.gguf)
        out[name] = (folder, gguf_path)
    return out


@pytest.fixture(scope="module")
def llama(twin):
    llm = llama_cpp.Llama(model_path=str(twin.gguf), logits_all=True, n_ctx=64, n_threads=1, verbose=False,
                          type_k=0, type_v=0)  # GGML_TYPE_F32 cache: the F16 cache alone differs by 1e-3
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def run(llama, loras):
    """logits(adapters=[(name, scale), …]) from llama.cpp for TOKENS."""
    loaded = {}

    def logits(adapters=()) -> np.ndarray:
        ptrs = []
        for i, (name, _) in enumerate(adapters):
            # llama.cpp keeps one scale per adapter handle: a second use of a file is a second handle
            key = (name, [n for n, _ in adapters[:i]].count(name))
            if key not in loaded:
                handle = llama_cpp.llama_adapter_lora_init(llama._model.model, str(loras[name][1]).encode())
                assert handle, f"llama.cpp refused the converted adapter {name}"
                loaded[key] = handle
            ptrs.append(loaded[key])
        n = len(ptrs)
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*ptrs)
        scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
        assert llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, arr if n else None, n, scales if n else None) == 0
        llama.reset()
        llama.eval(TOKENS)
        return np.array(llama.scores[: len(TOKENS)], dtype=np.float64)

    return logits


def hf_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].double().numpy()


def hf_merged(twin, loras, adapters) -> np.ndarray:
    """transformers logits of W + Σ scale·ΔW, each ΔW from PEFT's own get_delta_weight (its scaling,
    rsLoRA and patterns included): what LoRA's arithmetic says several scaled adapters compute."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    base = load_hf(twin)
    params = dict(base.named_parameters())
    for name, scale in adapters:
        peft_model = PeftModel.from_pretrained(load_hf(twin), str(loras[name][0])).eval()
        with torch.no_grad():
            for module_name, module in peft_model.named_modules():
                if isinstance(module, LoraLayer) and "default" in module.lora_A:
                    key = module_name.removeprefix("base_model.model.") + ".weight"
                    params[key].add_(scale * module.get_delta_weight("default"))
    return hf_logits(base)


def hf_peft(twin, folder) -> np.ndarray:
    from peft import PeftModel

    return hf_logits(PeftModel.from_pretrained(load_hf(twin), str(folder)).eval())


def test_base_twin_agrees(twin, run):
    base = run()
    assert np.abs(base - hf_logits(load_hf(twin))).max() < TOL
    assert base.std() > 0.1  # logits that carry signal, so that the tolerance means something


@pytest.mark.parametrize("name", ["all", "few", "rslora", "patterns"])
def test_converted_adapter_matches_peft(twin, loras, run, name):
    expected = hf_peft(twin, loras[name][0])
    got = run([(name, 1.0)])
    assert np.abs(got - expected).max() < TOL
    assert np.abs(expected - hf_logits(load_hf(twin))).max() > 1000 * TOL  # the adapter changes the logits


def test_scale_zero_is_the_base(run):
    np.testing.assert_array_equal(run([("all", 0.0)]), run())


def test_scales_add_up(twin, loras, run):
    one = run([("all", 1.0)])
    # the same adapter twice at 0.5 is that adapter once: ΔW·0.5 + ΔW·0.5
    assert np.abs(run([("all", 0.5), ("all", 0.5)]) - one).max() < TOL
    # scale 2 and two adapters stacked with their own scales: W + Σ scale·ΔW, as transformers computes it
    assert np.abs(run([("all", 2.0)]) - hf_merged(twin, loras, [("all", 2.0)])).max() < TOL
    stacked = run([("all", 1.0), ("few", 0.7)])
    assert np.abs(stacked - hf_merged(twin, loras, [("all", 1.0), ("few", 0.7)])).max() < TOL
    assert np.abs(stacked - one).max() > 100 * TOL


def test_gguf_keys_and_tensors(twin, loras):
    reader = GGUFReader(loras["all"][1])

    def value(key):
        field = reader.fields[key]
        return field.contents()

    assert value("general.architecture") == "llama"
    assert value("general.type") == "adapter"
    assert value("adapter.type") == "lora"
    assert value("adapter.lora.alpha") == pytest.approx(8.0)
    names = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    expected = {f"blk.{i}.{kind}.weight.lora_{ab}" for i in range(twin.n_layers) for kind in HF_PROJ for ab in "ab"}
    assert set(names) == expected
    kv = twin.kv_heads * twin.hidden // twin.heads
    assert names["blk.0.attn_q.weight.lora_a"] == (twin.hidden, 4)  # ggml order: [in, rank]
    assert names["blk.0.attn_k.weight.lora_b"] == (4, kv)  # [rank, out]
    assert names["blk.1.ffn_down.weight.lora_a"] == (twin.intermediate, 4)
    # rsLoRA: alpha·√r written, so that llama.cpp's alpha/r is PEFT's alpha/√r
    assert GGUFReader(loras["rslora"][1]).fields["adapter.lora.alpha"].contents() == pytest.approx(8 * math.sqrt(4))


def test_converter_refuses_what_it_cannot_convert(twin, tmp_path):
    assert issubclass(AdapterError, BadRequest)
    dora = make_peft_lora(twin, tmp_path / "dora", use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        convert_for_base(dora, tmp_path / "x.gguf", twin.gguf)
    saved = make_peft_lora(twin, tmp_path / "saved", modules_to_save=["norm"])
    with pytest.raises(AdapterError, match="modules_to_save"):
        convert_for_base(saved, tmp_path / "x.gguf", twin.gguf)
    assert not (tmp_path / "x.gguf").exists()

    good = make_peft_lora(twin, tmp_path / "good")
    # the config hides DoRA, the tensors still show it
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["use_dora"] = False
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="lora_magnitude_vector"):
        convert_for_base(dora, tmp_path / "x.gguf", twin.gguf)
    with pytest.raises(AdapterError, match="architecture"):
        convert_peft_adapter(good, tmp_path / "x.gguf", base_arch="gpt2")
    with pytest.raises(AdapterError, match="layer 1 .*1 layers"):
        convert_peft_adapter(good, tmp_path / "x.gguf", base_arch="qwen2", base_n_layers=1)
    weights = good / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="truncated"):
        convert_for_base(good, tmp_path / "x.gguf", twin.gguf)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterError, match="not a safetensors file"):
        convert_for_base(good, tmp_path / "x.gguf", twin.gguf)
    weights.unlink()
    (good / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="adapter_model.bin"):
        convert_for_base(good, tmp_path / "x.gguf", twin.gguf)
    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_compat_refuses_another_architecture(twin, loras, tmp_path):
    qwen = tmp_path / "qwen2.gguf"
    info = convert_peft_adapter(loras["all"][0], qwen, base_arch="qwen2")
    assert info.arch == "qwen2" and len(info.targets) == twin.n_layers * len(LINEAR_MODULES)
    with pytest.raises(AdapterError, match="qwen2 architecture, the model is llama"):
        check_adapter_fits(qwen, twin.gguf)
    check_adapter_fits(loras["all"][1], twin.gguf)  # the right one fits
    with pytest.raises(AdapterError, match="not a GGUF"):
        check_adapter_fits(loras["all"][0] / "adapter_config.json", twin.gguf)
