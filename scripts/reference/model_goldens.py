#!/usr/bin/env python3
"""Developer-only: reference forward passes and LoRA gradients from transformers and peft,
written as goldens for the Rust model and LoRA code.

Everything runs on the CPU in float32 with torch.use_deterministic_algorithms(True), one
thread, attn_implementation="eager" and use_cache=False. Random numbers come from
torch.Generator objects with fixed seeds, so two runs write byte-identical files (checked
with --check). Nothing is typed by hand: rerun this script after changing a case.

1. Model forward goldens: tests/golden/model/<case>/

   case               config (all fp32, hidden_act silu)
   stories260k        the bundled models/stories260k (read in place, not copied): Llama,
                      hidden 64, 5 layers, 8 heads, 4 kv heads, vocab 512, tied
   llama_gqa_untied   LlamaConfig hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      vocab 128, untied, max_position_embeddings 64, rms_norm_eps 1e-6,
                      rope_theta 10000
   llama3_rope        LlamaConfig hidden 32, intermediate 64, 2 layers, 4 heads, 1 kv head,
                      vocab 128, tied, max_position_embeddings 128, rope_theta 500000,
                      rope_scaling {rope_type llama3, factor 8, low_freq_factor 1,
                      high_freq_factor 4, original_max_position_embeddings 16}; T = 40 so
                      positions run past 16. Checked here: the logits differ from the same
                      weights with plain (unscaled) RoPE.
   mistral            MistralConfig hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      head_dim 16 (explicit, != hidden/heads = 8, so q_proj is [64, 32] and
                      o_proj [32, 64]), vocab 128, untied, sliding_window null,
                      max_position_embeddings 64
   qwen2              Qwen2Config hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      vocab 128, tied, use_sliding_window false, max_position_embeddings 64
                      (q/k/v carry biases: Qwen2 always has them, o_proj has none)
   qwen3_gqa_tied     Qwen3Config hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      head_dim 16 (explicit, != hidden/heads = 8), vocab 128, tied,
                      attention_bias false, use_sliding_window false,
                      max_position_embeddings 64 (q_norm / k_norm: RMSNorm [16] per head)
   qwen3_untied_bias  Qwen3Config as qwen3_gqa_tied but 1 kv head, head_dim 12, untied,
                      attention_bias true (a bias on q/k/v and on o_proj)
   Qwen3 cases are checked here: the logits differ from the same weights with q_norm and
   k_norm set to ones (so the per-head norms' weights matter to the goldens).
   gemma2_gqa_tied    Gemma2Config hidden 32, intermediate 64, 3 layers, 4 heads, 2 kv heads,
                      head_dim 16, vocab 128, hidden_activation gelu_pytorch_tanh, tied,
                      query_pre_attn_scalar 24, sliding_window 6 (default layer_types: layers
                      0 and 2 slide, 1 is global), attn_logit_softcapping 0.05,
                      final_logit_softcapping 0.1, rope_theta 10000, max_position_embeddings 64
   gemma2_untied_bias as gemma2_gqa_tied but 4 kv heads, head_dim 8, query_pre_attn_scalar 8,
                      sliding_window 5, layer_types [full, sliding, sliding], attention_bias,
                      untied, no final soft-cap, rope_theta 500
   gemma3_gqa_tied    Gemma3TextConfig as gemma2_gqa_tied (no soft-caps) with the older
                      spellings sliding_window_pattern 2, rope_theta 1000 (global layers) and
                      rope_local_base_freq 50 (sliding layers); q_norm / k_norm [16]
   gemma3_untied_linear_rope  Gemma3TextConfig 1 kv head, head_dim 12, query_pre_attn_scalar
                      16, sliding_window 5, layer_types [sliding, full, sliding], untied,
                      final_logit_softcapping 0.1, rope_parameters {full_attention: linear
                      ×8, theta 1000; sliding_attention: theta 50}
   Gemma cases are checked here: the logits change without the sliding window, without each
   soft-cap that is set, and (Gemma 3) with the local rope base set to the global one. Their
   soft-caps are small so that tanh bends these tiny random scores and logits. Gemma's cases
   draw their seeds from their name through seed_index, the later ones through case_seed;
   neither depends on a case's place in the list.
   phi3_gqa_longrope  Phi3Config hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      vocab 128, untied, max_position_embeddings 64,
                      original_max_position_embeddings 16, rope_scaling {type longrope,
                      short_factor [1, 1.25, 1.5, 2], long_factor [1, 2, 4, 8]} (no
                      factor: transformers takes
                      64/16 = 4, attention factor sqrt(1 + ln 4 / ln 16)); fused qkv_proj
                      [64, 32] and gate_up_proj [128, 32]. T = 24 > 16 runs on the long
                      factors; its packed row (10 + 14 tokens, positions below 16) on the
                      short ones. Checked here: the logits differ from plain RoPE (by more
                      than 5e-4).
   phi3_tied_partial_rotary  Phi3Config as above but 4 kv heads (no GQA), tied,
                      partial_rotary_factor 0.5 (rotary embedding on the first 4 of each
                      head's 8 dimensions), default RoPE, original_max_position_embeddings 64
   olmo2_gqa          Olmo2Config hidden 32, intermediate 64, 2 layers, 4 heads, 2 kv heads,
                      vocab 128, untied, max_position_embeddings 64 (post-norms only;
                      q_norm [32] and k_norm [16] over all heads of q and k together)
   olmo2_mha_tied_bias  Olmo2Config as olmo2_gqa but 4 kv heads, tied, attention_bias true
   OLMo 2 cases are checked like Qwen3's (q/k norm weights change the logits).
   Cases from phi3_gqa_longrope on take their seeds from their name, not their place in
   the list (case_seed), so cases appended on other branches do not move them.
   mixtral_moe        MixtralConfig hidden 32, intermediate 48 (each expert), 2 layers, 4 heads,
                      2 kv heads, vocab 128, untied, 4 local experts, top-2 (normalized),
                      sliding_window null, max_position_embeddings 64, output_router_logits
                      true, router_aux_loss_coef 0.02 (the loss is cross-entropy + 0.02 · aux)
   qwen3_moe_gqa      Qwen3MoeConfig hidden 32, intermediate 64 (dense layer), 3 layers, 4 heads,
                      2 kv heads, head_dim 16, vocab 128, untied, 6 experts of width 24, top-3,
                      norm_topk_prob false, mlp_only_layers [1] (layer 1 dense),
                      output_router_logits true, router_aux_loss_coef 0.05
   MoE cases also hold aux_loss (transformers' load_balancing_loss_func over every sparse
   layer's router logits), ce_loss (the same forward without the aux term) and
   aux_loss_masked with padding_mask (attention_mask with row 1's last 6 tokens padding);
   the script checks that the aux term changes the loss.
   MoE cases keep the seeds of the place they were generated at (6 and 7; see seeds()).

   The random cases are built from their config under torch.manual_seed(0); then every
   parameter (model.named_parameters(), so a tied lm_head is drawn once, through
   embed_tokens) is redrawn from a generator seeded with 1000 + case index, in
   named_parameters order: RMSNorm weights 1 + 0.1 * randn, every other weight and bias
   0.02 * randn. They are saved with model.save_pretrained(dir, safe_serialization=True)
   (config.json + model.safetensors; generation_config.json is deleted), and the goldens
   below come from the model read back from that folder. transformers 5 writes RoPE
   settings as "rope_parameters": {"rope_type": ..., "rope_theta": ..., plus the scaling
   fields}, with no top-level rope_theta or rope_scaling (models/stories260k/config.json
   still has the older top-level "rope_theta"), and always writes head_dim (8 for the
   Llama cases, derived as hidden/heads). Tied models have no lm_head.weight in the file.

   expected.safetensors in every case folder:
     input_ids  int64 [2, T]        T = 24 (40 for llama3_rope), uniform over the vocab
                                    from a generator seeded with 2000 + case index
                                    (1999 for stories260k, which also has
                                    input_ids[0, 0] = 1, BOS)
     logits     fp32  [2, T, vocab] model(input_ids).logits
     loss       fp32  [] (0-dim)    model(input_ids, labels=input_ids).loss, i.e. mean
                                    cross entropy over the B*(T-1) shifted tokens
   llama_gqa_untied and phi3_gqa_longrope also hold one packed row (two samples of 10 and 14 tokens):
     packed_input_ids     int64 [1, 24]
     packed_position_ids  int64 [1, 24]       0..9 then 0..13
     packed_logits        fp32  [1, 24, 128]  model(packed_input_ids,
                                    position_ids=packed_position_ids,
                                    attention_mask=M).logits, where M is a 4-D float
                                    additive mask [1, 1, 24, 24]: 0 where key <= query
                                    within the same sample, torch.finfo(float32).min
                                    elsewhere (block-diagonal causal). transformers 5
                                    passes a 4-D mask through unchanged to eager attention.
                                    Checked here against running the two samples separately
                                    (max abs diff < 1e-5) and against transformers' own
                                    packed-sequence detection from position_ids alone.
   stories260k also gets expected_greedy_ids_from_bos_64.txt, copied from
   ../shared/assets/models/stories260k/ (llama2.c run.c's greedy output from BOS); this
   script checks that transformers' greedy generate() from [[1]] (64 new tokens) gives the
   same ids, and stops with an error if not.

2. LoRA gradient goldens: tests/golden/lora/<case>/ (peft get_peft_model, LoraConfig
   task_type CAUSAL_LM, bias "none", lora_dropout 0.0, init_lora_weights=False)

   stories260k_all_linear         base models/stories260k, r 4, lora_alpha 8, target
                                  q/k/v/o/gate/up/down_proj
   llama_untied_rslora_save_head  base tests/golden/model/llama_gqa_untied, r 4,
                                  lora_alpha 16, use_rslora (scale 16/sqrt(4) = 8),
                                  target q_proj, v_proj, modules_to_save ["lm_head"]
   qwen3_all_linear               base tests/golden/model/qwen3_gqa_tied, r 4,
                                  lora_alpha 8, target q/k/v/o/gate/up/down_proj
   gemma2_all_linear              base tests/golden/model/gemma2_gqa_tied, r 4,
                                  lora_alpha 8, target q/k/v/o/gate/up/down_proj
   gemma3_all_linear              base tests/golden/model/gemma3_gqa_tied, as above
   phi3_all_linear                base tests/golden/model/phi3_gqa_longrope, r 4,
                                  lora_alpha 8, target_modules "all-linear" (peft resolves
                                  it to qkv_proj, o_proj, gate_up_proj, down_proj: LoRA
                                  on the fused modules)
   olmo2_all_linear               base tests/golden/model/olmo2_gqa, r 4, lora_alpha 8,
                                  target q/k/v/o/gate/up/down_proj
   (seeds from the case name for these two, as for the model cases)
   qwen3_moe_attention            base tests/golden/model/qwen3_moe_gqa, r 4, lora_alpha 8,
                                  target q/k/v/o_proj (what peft's all-linear reaches in a
                                  transformers 5 MoE layer); the loss carries the aux term
   mixtral_router_experts         base tests/golden/model/mixtral_moe, r 4, lora_alpha 8,
                                  target q_proj, v_proj and target_parameters gate.weight,
                                  experts.gate_up_proj, experts.down_proj: peft's ParamWrapper
                                  on the router [4, 32] (a 2-D parameter: plain LoRA) and on
                                  the fused 3-D experts (lora_A [r·E, in], lora_B [out, r·E];
                                  the second wrapper of the experts module nests the first,
                                  so gate_up_proj's tensors are saved under experts.base_layer)
   qwen3_moe_expert_down_rslora   base tests/golden/model/qwen3_moe_gqa, r 4, lora_alpha 16,
                                  use_rslora, target q_proj, k_proj and target_parameters
                                  mlp.experts.down_proj (the dense layer 1 has none)
   The target_parameters cases' case.json also hold peft's trainable and all-parameter counts
   (get_nb_trainable_parameters, what print_trainable_parameters prints).

   stories260k_dora               base models/stories260k, r 4, lora_alpha 8, use_dora,
                                  target q/k/v/o/gate/up/down_proj
   qwen2_dora_bias                base tests/golden/model/qwen2 (q/k/v biases: peft takes the
                                  bias out of the base term), r 4, lora_alpha 16, use_dora,
                                  target k_proj, q_proj, v_proj, down_proj

   The base is loaded with from_pretrained from its path relative to the repository root
   (so adapter_config.json's base_model_name_or_path is that relative path). After
   get_peft_model every lora_A / lora_B weight (named_parameters order) is redrawn as
   0.1 * randn from a generator seeded with 3000 + case index; a modules_to_save copy gets
   0.01 * randn added so it differs from the base; a DoRA magnitude (peft initialises it to
   ||W + scaling B A|| per row, from the A and B before the redraw) is then multiplied by
   1 + 0.1 * randn, so m / ||W + scaling B A|| is far from 1. target_modules is stored as a sorted
   list so adapter_config.json does not depend on Python's set order. model.save_pretrained
   writes adapter_config.json + adapter_model.safetensors as peft writes them (peft's
   README.md model card is deleted). Then with input_ids [2, 16] (generator seed
   4000 + case index) and labels = input_ids with labels[:, :5] = -100,
   loss = model(input_ids=..., labels=...).loss (mean over the 2 * 11 shifted tokens
   that are not -100) is back-propagated, and expected.safetensors holds
     input_ids int64 [2, 16], labels int64 [2, 16], loss fp32 [] (0-dim),
     logits fp32 [2, 16, vocab], and grad.<key> fp32 for every key of
     adapter_model.safetensors (every trainable parameter; e.g.
     grad.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight,
     grad.base_model.model.lm_head.weight,
     grad.base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector).
   The DoRA cases also hold merged.<module>.weight fp32 for every target of layer 0 (e.g.
   merged.model.layers.0.self_attn.q_proj.weight): peft's merge_and_unload after the backward.
   case.json records the base model path and the LoRA settings.

How to run (from anywhere; versions pinned in scripts/reference/requirements.txt):

  PYTHONPATH=/root/.cache/recipe/ref-py:/root/.cache/recipe/torch-2.11.0 \\
      python3 -S scripts/reference/model_goldens.py

Options: --check builds everything in a temporary folder and compares it byte for byte
with the files on disk instead of writing them (exit 1 on a difference).
"""
import os
import sys

# peft writes set-valued config fields with list(set); pin the string hash seed so any
# such field has a stable order (target_modules is sorted explicitly below as well).
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    flags = ["-S"] if sys.flags.no_site else []
    os.execv(sys.executable, [sys.executable] + flags + sys.argv)

import argparse  # noqa: E402
import zlib  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import zlib  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3TextConfig,
    Gemma3ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)
from peft import LoraConfig, get_peft_model  # noqa: E402

transformers.utils.logging.disable_progress_bar()
# peft 0.21 calls transformers' deprecated is_gradient_checkpointing; nothing to act on.
warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STORIES = "models/stories260k"  # relative to ROOT
GREEDY_SRC = os.path.join(ROOT, "..", "shared", "assets", "models", "stories260k",
                          "expected_greedy_ids_from_bos_64.txt")
GOLDEN = "tests/golden"  # relative to ROOT

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              vocab_size=128, rms_norm_eps=1e-6, hidden_act="silu")
GEMMA_COMMON = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=128,
                    rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh")

# The first cases of each list take their seeds from their place in it; cases added since
# take them from their name, so branches that append cases in parallel merge without
# moving each other's seeds.
LEGACY_RANDOM_CASES = 6
LEGACY_LORA_CASES = 5


def seed_index(index, case, legacy):
    return index if index < legacy else 100 + zlib.crc32(case.encode()) % 900

# (case, model class, config factory, T); index in this list picks the seeds.
RANDOM_CASES = [
    ("llama_gqa_untied", LlamaForCausalLM, lambda: LlamaConfig(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False,
        max_position_embeddings=64, rope_theta=10000.0), 24),
    ("llama3_rope", LlamaForCausalLM, lambda: LlamaConfig(
        **COMMON, num_key_value_heads=1, tie_word_embeddings=True,
        max_position_embeddings=128, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}), 40),
    ("mistral", MistralForCausalLM, lambda: MistralConfig(
        **COMMON, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        sliding_window=None, max_position_embeddings=64, rope_theta=10000.0), 24),
    ("qwen2", Qwen2ForCausalLM, lambda: Qwen2Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False,
        max_position_embeddings=64, rope_theta=10000.0), 24),
    # Appended after the others so their seeds (case index) and files stay as they were.
    ("qwen3_gqa_tied", Qwen3ForCausalLM, lambda: Qwen3Config(
        **COMMON, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        attention_bias=False, use_sliding_window=False, max_position_embeddings=64,
        rope_theta=10000.0), 24),
    ("qwen3_untied_bias", Qwen3ForCausalLM, lambda: Qwen3Config(
        **COMMON, num_key_value_heads=1, head_dim=12, tie_word_embeddings=False,
        attention_bias=True, use_sliding_window=False, max_position_embeddings=64,
        rope_theta=10000.0), 24),
    # Gemma 2 / Gemma 3 text (seeds keyed by name, see seed_index). The soft-caps are small
    # so that tanh bends these tiny random logits and scores (checked in gemma_sensitivity).
    ("gemma2_gqa_tied", Gemma2ForCausalLM, lambda: Gemma2Config(
        **GEMMA_COMMON, num_hidden_layers=3, num_key_value_heads=2, head_dim=16,
        query_pre_attn_scalar=24, sliding_window=6, tie_word_embeddings=True,
        attn_logit_softcapping=0.05, final_logit_softcapping=0.1,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), 24),
    ("gemma2_untied_bias", Gemma2ForCausalLM, lambda: Gemma2Config(
        **GEMMA_COMMON, num_hidden_layers=3, num_key_value_heads=4, head_dim=8,
        query_pre_attn_scalar=8, sliding_window=5, attention_bias=True, tie_word_embeddings=False,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"],
        attn_logit_softcapping=0.05, final_logit_softcapping=None,
        max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 500.0}), 24),
    ("gemma3_gqa_tied", Gemma3ForCausalLM, lambda: Gemma3TextConfig(
        **GEMMA_COMMON, num_hidden_layers=3, num_key_value_heads=2, head_dim=16,
        query_pre_attn_scalar=24, sliding_window=6, sliding_window_pattern=2, tie_word_embeddings=True,
        max_position_embeddings=64, rope_theta=1000.0, rope_local_base_freq=50.0), 24),
    ("gemma3_untied_linear_rope", Gemma3ForCausalLM, lambda: Gemma3TextConfig(
        **GEMMA_COMMON, num_hidden_layers=3, num_key_value_heads=1, head_dim=12,
        query_pre_attn_scalar=16, sliding_window=5, tie_word_embeddings=False,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        final_logit_softcapping=0.1, max_position_embeddings=64,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}), 24),
    ("phi3_gqa_longrope", Phi3ForCausalLM, lambda: Phi3Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=None,
        max_position_embeddings=64, original_max_position_embeddings=16,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.25, 1.5, 2.0],
                      "long_factor": [1.0, 2.0, 4.0, 8.0]},
        rope_theta=10000.0), 24),
    ("phi3_tied_partial_rotary", Phi3ForCausalLM, lambda: Phi3Config(
        **COMMON, num_key_value_heads=4, tie_word_embeddings=True, pad_token_id=None,
        max_position_embeddings=64, original_max_position_embeddings=64,
        partial_rotary_factor=0.5, rope_theta=10000.0), 24),
    ("olmo2_gqa", Olmo2ForCausalLM, lambda: Olmo2Config(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False,
        max_position_embeddings=64, rope_theta=10000.0), 24),
    ("olmo2_mha_tied_bias", Olmo2ForCausalLM, lambda: Olmo2Config(
        **COMMON, num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
        max_position_embeddings=64, rope_theta=10000.0), 24),
    ("mixtral_moe", MixtralForCausalLM, lambda: MixtralConfig(
        **{**COMMON, "intermediate_size": 48}, num_key_value_heads=2, tie_word_embeddings=False,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None,
        max_position_embeddings=64, rope_theta=10000.0, output_router_logits=True,
        router_aux_loss_coef=0.02), 24),
    ("qwen3_moe_gqa", Qwen3MoeForCausalLM, lambda: Qwen3MoeConfig(
        **{**COMMON, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16,
        tie_word_embeddings=False, num_experts=6, num_experts_per_tok=3,
        moe_intermediate_size=24, norm_topk_prob=False, decoder_sparse_step=1,
        mlp_only_layers=[1], use_sliding_window=False, max_position_embeddings=64,
        rope_theta=10000.0, output_router_logits=True, router_aux_loss_coef=0.05), 24),
]
MOE_CLASSES = (MixtralForCausalLM, Qwen3MoeForCausalLM)
# Cases before these counts seed from their index; later ones from their name.
INDEX_SEEDED_MODEL_CASES = 6
INDEX_SEEDED_LORA_CASES = 5
T_DEFAULT = 24
PACK_LENS = (10, 14)

# (case, base path relative to ROOT, LoraConfig kwargs)
LORA_CASES = [
    ("stories260k_all_linear", STORIES,
     dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR)),
    ("llama_untied_rslora_save_head", GOLDEN + "/model/llama_gqa_untied",
     dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"],
          modules_to_save=["lm_head"])),
    ("qwen3_all_linear", GOLDEN + "/model/qwen3_gqa_tied",
     dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR)),
    ("stories260k_dora", STORIES,
     dict(r=4, lora_alpha=8, use_dora=True, target_modules=ALL_LINEAR)),
    ("qwen2_dora_bias", GOLDEN + "/model/qwen2",
     dict(r=4, lora_alpha=16, use_dora=True, target_modules=["k_proj", "q_proj", "v_proj", "down_proj"])),
    ("gemma2_all_linear", GOLDEN + "/model/gemma2_gqa_tied",
     dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR)),
    ("gemma3_all_linear", GOLDEN + "/model/gemma3_gqa_tied",
     dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR)),
    ("phi3_all_linear", GOLDEN + "/model/phi3_gqa_longrope",
     dict(r=4, lora_alpha=8, target_modules="all-linear")),
    ("olmo2_all_linear", GOLDEN + "/model/olmo2_gqa",
     dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR)),
    ("qwen3_moe_attention", GOLDEN + "/model/qwen3_moe_gqa",
     dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
    ("mixtral_router_experts", GOLDEN + "/model/mixtral_moe",
     dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
          target_parameters=["gate.weight", "experts.gate_up_proj", "experts.down_proj"])),
    ("qwen3_moe_expert_down_rslora", GOLDEN + "/model/qwen3_moe_gqa",
     dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "k_proj"],
          target_parameters=["mlp.experts.down_proj"])),
]
LORA_T = 16
LORA_MASKED = 5


def case_seed(base, index, case, index_seeded):
    """base + index for the first cases (their files predate name seeds); base * 10^6 plus
    the name's CRC-32 (mod 10^6) for the rest, so a case keeps its seeds wherever it sits."""
    if index < index_seeded:
        return base + index
    return base * 1_000_000 + zlib.crc32(case.encode()) % 1_000_000


# The MoE cases were generated at these places in their lists, seeded by index (base + index).
MOE_INDEX_SEEDS = {"mixtral_moe": 6, "qwen3_moe_gqa": 7, "qwen3_moe_attention": 5}


def seeds(index, case, legacy, index_seeded):
    """A case's seed function (base -> seed): Gemma's cases, appended first with name seeds,
    keep seed_index's (base + 100 + CRC mod 900); the MoE cases their index seeds; every other
    case case_seed's."""
    if case.startswith("gemma"):
        at = seed_index(index, case, legacy)
        return lambda base: base + at
    if case in MOE_INDEX_SEEDS:
        at = MOE_INDEX_SEEDS[case]
        return lambda base: base + at
    return lambda base: case_seed(base, index, case, index_seeded)


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def meta():
    # One key only: safetensors writes the metadata map in hash order, so several keys
    # would make the header (and the file) differ from run to run.
    return {"generator": f"scripts/reference/model_goldens.py (transformers {transformers.__version__}, "
                         f"peft {peft.__version__}, torch {torch.__version__}, "
                         f"safetensors {safetensors.__version__})"}


def save_tensors(tensors, path):
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path, metadata=meta())


def write_json(obj, path):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_model(rel):
    m = AutoModelForCausalLM.from_pretrained(rel, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def forward_case(model, input_ids):
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        plain = model(input_ids=input_ids, use_cache=False).logits
    assert torch.equal(plain, out.logits), "logits with and without labels differ"
    assert out.loss.dim() == 0
    return out.logits.float(), out.loss.float()


def reinit(model, seed):
    """Redraw every parameter: RMSNorm weights 1 + 0.1 randn, all else 0.02 randn."""
    g = gen(seed)
    norm_params = set()
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            norm_params.add(id(mod.weight))
    seen = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if id(p) in norm_params:
                assert name.endswith("norm.weight"), name
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(0.02 * r)
            seen += 1
    return seen


def block_causal_mask(lens, dtype=torch.float32):
    t = sum(lens)
    allowed = torch.zeros(t, t, dtype=torch.bool)
    start = 0
    for n in lens:
        allowed[start:start + n, start:start + n] = torch.tril(torch.ones(n, n, dtype=torch.bool))
        start += n
    mask = torch.zeros(t, t, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def packed_golden(model, seed):
    t = sum(PACK_LENS)
    ids = torch.randint(0, model.config.vocab_size, (1, t), generator=gen(seed))
    pos = torch.cat([torch.arange(n) for n in PACK_LENS])[None].to(torch.int64)
    mask = block_causal_mask(PACK_LENS)
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
        # Cross-checks: the samples run one by one, and transformers' own packed detection.
        parts, start = [], 0
        for n in PACK_LENS:
            parts.append(model(input_ids=ids[:, start:start + n], use_cache=False).logits)
            start += n
        separate = torch.cat(parts, dim=1)
        auto = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        unmasked = model(input_ids=ids, use_cache=False).logits
    d_sep = (logits - separate).abs().max().item()
    d_auto = (logits - auto).abs().max().item()
    d_unm = (logits[:, PACK_LENS[0]:] - unmasked[:, PACK_LENS[0]:]).abs().max().item()
    assert d_sep < 1e-5, f"packed vs separate: {d_sep}"
    assert d_auto < 1e-5, f"packed vs position_ids-only: {d_auto}"
    assert d_unm > 1e-3, f"packing makes no difference to sample 2: {d_unm}"
    print(f"  packed: max|packed - separate| = {d_sep:.2e}, max|packed - auto| = {d_auto:.2e}, "
          f"max|packed - unpacked| (sample 2) = {d_unm:.2e}")
    return {"packed_input_ids": ids, "packed_position_ids": pos, "packed_logits": logits.float()}


def rope_sensitivity(model, input_ids, logits, min_diff=1e-3):
    """llama3_rope, phi3_gqa_longrope: the same weights with plain RoPE must give different logits."""
    cfg = type(model.config).from_dict(model.config.to_dict())
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
    plain = type(model)(cfg).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        other = plain(input_ids=input_ids, use_cache=False).logits
    d = (other - logits).abs().max().item()
    assert d > min_diff, f"rope scaling makes no difference: {d}"
    print(f"  max|scaled - plain rope| logits = {d:.2e}")


def qk_norm_sensitivity(model, input_ids, logits):
    """Qwen3, OLMo 2: the same weights with q_norm / k_norm at ones must give different logits."""
    plain = type(model)(model.config).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, p in plain.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(1.0)
        other = plain(input_ids=input_ids, use_cache=False).logits
    d = (other - logits).abs().max().item()
    assert d > 1e-4, f"q/k norm weights make no difference: {d}"
    print(f"  max|q/k norm - unit q/k norm| logits = {d:.2e}")


def gemma_sensitivity(model, input_ids, logits):
    """Gemma: the sliding window, each soft-cap set, and Gemma 3's local rope base must each
    change the logits (so the goldens exercise them), and transformers' eager and SDPA paths
    agree where SDPA applies (no attention soft-cap)."""
    cfg = model.config

    def other(**changes):
        c = type(cfg).from_dict(cfg.to_dict())
        for k, v in changes.items():
            setattr(c, k, v)
        c._attn_implementation = "eager"
        m = type(model)(c).eval()
        m.load_state_dict(model.state_dict())
        with torch.no_grad():
            d = (m(input_ids=input_ids, use_cache=False).logits - logits).abs().max().item()
        return d

    checks = {"sliding window": other(sliding_window=10_000)}
    if cfg.final_logit_softcapping is not None:
        checks["final soft-cap"] = other(final_logit_softcapping=None)
    if cfg.model_type == "gemma2":
        checks["attention soft-cap"] = other(attn_logit_softcapping=None)
    else:
        local = dict(cfg.rope_parameters["sliding_attention"])
        local["rope_theta"] = cfg.rope_parameters["full_attention"]["rope_theta"]
        rp = dict(cfg.rope_parameters)
        rp["sliding_attention"] = local
        checks["local rope base"] = other(rope_parameters=rp)
    for what, d in checks.items():
        assert d > 1e-4, f"{what} makes no difference: {d}"
        print(f"  max|logits - logits without {what}| = {d:.2e}")


def moe_extras(model, input_ids, loss):
    """The load-balancing term alone, the loss without it, and the term under a padding mask."""
    with torch.no_grad():
        out = model(input_ids=input_ids, labels=input_ids, use_cache=False)
        ce = model(input_ids=input_ids, labels=input_ids, use_cache=False,
                   output_router_logits=False).loss
        mask = torch.ones_like(input_ids)
        mask[1, -6:] = 0
        masked = model(input_ids=input_ids, attention_mask=mask, use_cache=False).aux_loss
    coef = model.config.router_aux_loss_coef
    d = (loss - ce).abs().item()
    assert abs(loss.item() - (ce.item() + coef * out.aux_loss.item())) < 1e-6
    assert d > 1e-4, f"the aux term makes no difference to the loss: {d}"
    assert (masked - out.aux_loss).abs().item() > 1e-5, "padding makes no difference to aux"
    print(f"  aux_loss {out.aux_loss.item():.6f} (coef {coef}), masked {masked.item():.6f}, "
          f"ce_loss {ce.item():.6f}")
    return {"aux_loss": out.aux_loss.float(), "ce_loss": ce.float(),
            "aux_loss_masked": masked.float(), "padding_mask": mask}


def model_goldens(out):
    # stories260k: the bundled model, read in place.
    case_dir = os.path.join(out, GOLDEN, "model", "stories260k")
    os.makedirs(case_dir)
    model = load_model(os.path.join(ROOT, STORIES))
    ids = torch.randint(0, model.config.vocab_size, (2, T_DEFAULT), generator=gen(1999))
    ids[0, 0] = 1
    logits, loss = forward_case(model, ids)
    save_tensors({"input_ids": ids, "logits": logits, "loss": loss},
                 os.path.join(case_dir, "expected.safetensors"))
    print(f"stories260k: loss {loss.item():.6f}")

    with open(GREEDY_SRC) as f:
        want = [int(x) for x in f.read().split()]
    assert len(want) == 64, len(want)
    with torch.no_grad():
        got = model.generate(torch.tensor([[1]]), do_sample=False, max_new_tokens=64,
                             min_new_tokens=64, use_cache=True)[0, 1:].tolist()
    if got != want:
        raise SystemExit(f"stories260k greedy decoding differs from run.c:\n got  {got}\n want {want}")
    print("stories260k: transformers greedy from BOS matches run.c (64 tokens)")
    shutil.copyfile(GREEDY_SRC, os.path.join(case_dir, "expected_greedy_ids_from_bos_64.txt"))

    for index, (case, cls, make_cfg, t) in enumerate(RANDOM_CASES):
        case_dir = os.path.join(out, GOLDEN, "model", case)
        torch.manual_seed(0)
        cfg = make_cfg()
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        seed = seeds(index, case, LEGACY_RANDOM_CASES, INDEX_SEEDED_MODEL_CASES)
        n = reinit(model, seed(1000))
        model.save_pretrained(case_dir, safe_serialization=True)
        gc = os.path.join(case_dir, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        # The goldens come from the model as saved and reloaded (what the Rust side reads).
        model = load_model(case_dir)
        ids = torch.randint(0, cfg.vocab_size, (2, t), generator=gen(seed(2000)))
        logits, loss = forward_case(model, ids)
        tensors = {"input_ids": ids, "logits": logits, "loss": loss}
        print(f"{case}: {n} parameter tensors redrawn, loss {loss.item():.6f}")
        if case in ("llama_gqa_untied", "phi3_gqa_longrope"):
            tensors.update(packed_golden(model, seed(2100)))
        if case == "llama3_rope":
            rope_sensitivity(model, ids, logits)
        if case == "phi3_gqa_longrope":
            # 0.02-scale weights keep attention scores small: the rotation moves the logits
            # by about 1e-3, still ten times the parity tolerance.
            rope_sensitivity(model, ids, logits, min_diff=5e-4)
        if cls in (Qwen3ForCausalLM, Olmo2ForCausalLM):
            qk_norm_sensitivity(model, ids, logits)
        if cls in (Gemma2ForCausalLM, Gemma3ForCausalLM):
            gemma_sensitivity(model, ids, logits)
        if cls in MOE_CLASSES:
            tensors.update(moe_extras(model, ids, loss))
        save_tensors(tensors, os.path.join(case_dir, "expected.safetensors"))


def saved_name(param):
    """The adapter file's key for a trainable parameter's name, as peft saves it."""
    name = param.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    return name.replace(".default", "").replace(".modules_to_save", "")


def dora_merged(model, targets):
    """peft's merge_and_unload of a DoRA model: the merged weight of every targeted linear
    of layer 0, as merged.<HF module name>.weight (the model is spent afterwards)."""
    merged = model.merge_and_unload()
    out = {}
    for name, mod in merged.named_modules():
        if ".layers.0." in name and name.rsplit(".", 1)[-1] in targets:
            out[f"merged.{name}.weight"] = mod.weight.detach().float()
    assert len(out) == len(targets), sorted(out)
    return out


def lora_goldens(out):
    for index, (case, base_rel, kw) in enumerate(LORA_CASES):
        case_dir = os.path.join(out, GOLDEN, "lora", case)
        # Runs with the staged tree as the working directory (see main), so the relative
        # base path resolves there and peft records it as given.
        torch.manual_seed(0)
        base = load_model(base_rel)
        cfg = LoraConfig(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0,
                         init_lora_weights=False, **kw)
        model = get_peft_model(base, cfg)
        pcfg = model.peft_config["default"]
        pcfg.target_modules = sorted(pcfg.target_modules)
        if pcfg.target_parameters:
            pcfg.target_parameters = sorted(pcfg.target_parameters)
        seed = seeds(index, case, LEGACY_LORA_CASES, INDEX_SEEDED_LORA_CASES)
        g = gen(seed(3000))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_A." in name or ".lora_B." in name:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            for name, p in model.named_parameters():
                if ".modules_to_save." in name:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
            for name, p in model.named_parameters():
                if ".lora_magnitude_vector." in name:
                    p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        model.eval()
        model.save_pretrained(case_dir, safe_serialization=True)
        readme = os.path.join(case_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        saved = load_file(os.path.join(case_dir, "adapter_model.safetensors"))

        # Map each saved adapter key to its trainable parameter by value and name.
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        key_of = {}
        for key, t in saved.items():
            cands = [n for n, p in trainable.items()
                     if saved_name(n) == key
                     and torch.equal(p.detach(), t)]
            assert len(cands) == 1, f"{case}: {key} matches {cands}"
            key_of[cands[0]] = key
        missing = sorted(set(trainable) - set(key_of))
        assert not missing, f"{case}: trainable parameters not in adapter file: {missing}"

        ids = torch.randint(0, model.config.vocab_size, (2, LORA_T), generator=gen(seed(4000)))
        labels = ids.clone()
        labels[:, :LORA_MASKED] = -100
        model.zero_grad(set_to_none=True)
        res = model(input_ids=ids, labels=labels, use_cache=False)
        res.loss.backward()
        assert res.loss.dim() == 0
        tensors = {"input_ids": ids, "labels": labels, "loss": res.loss.detach().float(),
                   "logits": res.logits.detach().float()}
        for name, key in key_of.items():
            grad = trainable[name].grad
            assert grad is not None, f"{case}: no gradient for {name}"
            assert grad.abs().max().item() > 0, f"{case}: zero gradient for {name}"
            tensors["grad." + key] = grad
        assert all(("grad." + k) in tensors for k in saved), f"{case}: adapter key without grad"
        if kw.get("use_dora"):
            tensors.update(dora_merged(model, kw["target_modules"]))
        save_tensors(tensors, os.path.join(case_dir, "expected.safetensors"))
        write_json({"base_model": base_rel, "lora": {k: (sorted(v) if isinstance(v, list) else v)
                                                     for k, v in kw.items()},
                    "lora_dropout": 0.0, "bias": "none", "init_lora_weights": False,
                    "task_type": "CAUSAL_LM", "lora_weights_std": 0.1,
                    "modules_to_save_perturbation_std": 0.01 if kw.get("modules_to_save") else None,
                    "seq_len": LORA_T, "labels_masked_prefix": LORA_MASKED,
                    "transformers_version": transformers.__version__,
                    "peft_version": peft.__version__,
                    **({"trainable_parameters": model.get_nb_trainable_parameters()[0],
                        "all_parameters": model.get_nb_trainable_parameters()[1]}
                       if kw.get("target_parameters") else {})},
                   os.path.join(case_dir, "case.json"))
        print(f"{case}: loss {res.loss.item():.6f}, {len(saved)} adapter tensors, "
              f"{len(key_of)} gradients")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with tests/golden instead of writing")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)

    with tempfile.TemporaryDirectory() as stage:
        # The staged tree mirrors ROOT (models/ is a link to ROOT/models), so relative
        # base paths resolve the same way; llama_gqa_untied is read back from the stage.
        os.symlink(os.path.join(ROOT, "models"), os.path.join(stage, "models"))
        model_goldens(stage)
        cwd = os.getcwd()
        os.chdir(stage)
        try:
            lora_goldens(stage)
        finally:
            os.chdir(cwd)

        files = []
        for dirpath, _, names in os.walk(os.path.join(stage, GOLDEN)):
            for n in names:
                files.append(os.path.relpath(os.path.join(dirpath, n), stage))
        files.sort()
        print(f"transformers {transformers.__version__}, peft {peft.__version__}, "
              f"torch {torch.__version__}, safetensors {safetensors.__version__}")
        total = 0
        bad = 0
        for rel in files:
            src = os.path.join(stage, rel)
            dst = os.path.join(ROOT, rel)
            size = os.path.getsize(src)
            total += size
            if args.check:
                if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                    print(f"differs: {rel}", file=sys.stderr)
                    bad = 1
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
                print(f"wrote {rel:70s} {size:>8,d} bytes")
        print(f"{len(files)} files, {total:,d} bytes")
        if args.check:
            sys.exit(bad)


if __name__ == "__main__":
    main()
