"""Model resolution and loading; the CPU 4-bit gradient trap stays closed.

Run: .venv/bin/pytest -q tests/test_models.py
"""

import pytest
import torch

from sinternal_lib.models import (
    ModelNotAvailable, contiguous_lm_head, guard_cpu_4bit, load_model, lora_config, resolve_model_ref, save_tiny_model, tiny_model,
)


def _with_lora(model, **lora):
    """`model` with a fresh LoRA from the kit's one LoRA helper (what the trainers do with peft_config)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora))


def test_bundled_name_resolves_to_converted_folder():
    path = resolve_model_ref("smollm2-135m-instruct")
    assert path.endswith("smollm2-135m-instruct")


def test_local_folder_resolves(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    assert resolve_model_ref(str(folder)) == str(folder)


def test_folder_without_config_is_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailable, match="config.json"):
        resolve_model_ref(str(tmp_path))


def test_offline_hub_id_error_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="huggingface-cli download"):
        resolve_model_ref("some-org/not-a-cached-model-xyz")


def test_tiny_model_shares_smollm2_tokenizer():
    model, tok = tiny_model()
    assert model.config.vocab_size == len(tok) == 49152
    assert tok.padding_side == "left" and tok.pad_token is not None


def _lora_step_after_generate(model, tok):
    enc = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    model.eval()
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=3, do_sample=False)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # LoRA B starts at zero, so A only gets gradient from the second step on
        loss = model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], p.detach())]
    return changed, before


def test_4bit_lora_gets_gradients_after_generate(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    model, tok = load_model(str(folder), load_in_4bit=True, device="cpu", trainable=True)
    model = _with_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    changed, before = _lora_step_after_generate(model, tok)
    assert len(changed) == len(before), f"only {len(changed)}/{len(before)} LoRA tensors changed"


def test_guard_counts_4bit_layers(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    model, _ = load_model(str(folder), load_in_4bit=True, device="cpu")
    assert guard_cpu_4bit(model) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)


def test_adapter_save_and_load(tmp_path):
    folder = save_tiny_model(tmp_path / "tiny")
    model, tok = load_model(str(folder), device="cpu", trainable=True)
    model = _with_lora(model, r=4, lora_alpha=8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    model.eval()  # LoRA dropout off
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(str(folder), device="cpu", adapter=tmp_path / "adapter")
    enc = tok("hello", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, again(**enc).logits, atol=1e-5)


@pytest.mark.slow
def test_real_smollm2_4bit_lora_gradients_after_generate():
    model, tok = load_model("smollm2-135m-instruct", load_in_4bit=True, device="cpu", trainable=True)
    model = _with_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    changed, before = _lora_step_after_generate(model, tok)
    assert len(changed) == len(before) == 30 * 2 * 2


def test_decode_attention_turns_off_only_cudnn_attention_on_cuda():
    from sinternal_lib.models import decode_attention

    b = torch.backends.cuda
    before = (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled())
    with decode_attention("cpu"):  # no-op off CUDA
        assert b.cudnn_sdp_enabled() == before[0]
    with decode_attention("cuda"):  # the backend flags are process-wide; setting them needs no GPU
        assert not b.cudnn_sdp_enabled() and b.flash_sdp_enabled() and b.mem_efficient_sdp_enabled()
        assert b.math_sdp_enabled()
    assert (b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(),
            b.math_sdp_enabled()) == before


def test_lora_config_is_the_recipe_section_in_peft_names():
    from sinternal_lib.config import LoraSection

    default = lora_config()
    assert default.task_type == "CAUSAL_LM" and (default.r, default.lora_alpha) == (16, 32)
    assert default.target_modules == set(LoraSection().target_modules)  # the one default list
    assert lora_config(LoraSection(r=8)).r == 8 and lora_config({"lora_dropout": 0.0}).lora_dropout == 0.0
    with pytest.raises(ValueError, match="r, lora_alpha, lora_dropout, target_modules"):
        lora_config({"alpha": 8})  # the old name


def test_trainable_base_is_prepared_without_an_adapter(tmp_path):
    """`trainable=True` without an adapter: a frozen, guarded 4-bit base for a trainer's peft_config."""
    folder = save_tiny_model(tmp_path / "tiny")
    model, _ = load_model(str(folder), load_in_4bit=True, device="cpu", trainable=True)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert not any(p.requires_grad for p in model.parameters())  # k-bit preparation froze the base
    assert guard_cpu_4bit(model) == 2 * 7


def _head_inputs(model) -> list[torch.Tensor]:
    """Record what the LM head receives (a hook registered after the kit's, so it sees the kit's result)."""
    seen: list[torch.Tensor] = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lm_head_gets_a_contiguous_input_and_the_same_logits(dtype):
    """`logits_to_keep` slices the hidden states; a frozen head would then expand its weight per row
    (models.contiguous_lm_head). With the hook the head sees a contiguous input and gives the logits of the
    full forward's last position."""
    import copy

    model, tok = tiny_model()
    model = model.to(dtype).requires_grad_(False)  # frozen, as under PEFT
    assert contiguous_lm_head(model) is False  # tiny_model, like load_model, already added it: once only
    ids = torch.tensor([tok("one two three four")["input_ids"], tok("five six seven eight")["input_ids"]])
    seen = _head_inputs(model)
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1:, :]
        last = model(input_ids=ids, logits_to_keep=1).logits
    assert all(x.is_contiguous() for x in seen) and seen[-1].shape[1] == 1
    assert torch.allclose(full.float(), last.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)
    twin = copy.deepcopy(model)  # the GRPO rollouts' merged copy is a deep copy: the hook goes with it
    seen_twin = _head_inputs(twin)
    with torch.no_grad():
        assert torch.equal(twin(input_ids=ids, logits_to_keep=1).logits, last)
    assert seen_twin and all(x.is_contiguous() for x in seen_twin)


def test_contiguous_lm_head_keeps_gradients_and_reaches_a_loaded_adapter(tmp_path):
    """The copy is differentiable (LoRA grads equal those without the hook), and a model loaded with an adapter
    (PEFT freezes its base head) carries the hook; `contiguous_head=False` loads the head unchanged."""
    folder = save_tiny_model(tmp_path / "tiny")
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    grads = []
    for contiguous in (True, False):
        model, _ = load_model(str(folder), device="cpu", trainable=True, contiguous_head=contiguous)
        assert bool(model.get_output_embeddings()._forward_pre_hooks) is contiguous
        torch.manual_seed(0)  # the same LoRA init and dropout masks in both loads
        model = _with_lora(model, r=4, lora_alpha=8)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
        model.train()
        model(input_ids=ids, logits_to_keep=3).logits.float().logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])
    model.save_pretrained(tmp_path / "adapter")
    again, _ = load_model(str(folder), device="cpu", adapter=tmp_path / "adapter")
    seen = _head_inputs(again)
    with torch.no_grad():
        again(input_ids=ids, logits_to_keep=1)
    assert seen and seen[0].is_contiguous()
