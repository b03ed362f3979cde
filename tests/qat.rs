//! Quantization-aware training (src/model/qat.rs, `qat` with int8 activations and int4 weights)
//! against torchao 0.18's FakeQuantizedLinear as Axolotl builds it, on the CPU: the two fake
//! quantizers, the layer's output and the gradients of its input, weight and bias, from goldens
//! written by scripts/reference/qat_goldens.py. The fake quantizers are held bit for bit (the same
//! ops in the same order and dtypes); the matmul outputs and gradients too, as the same libtorch
//! runs them, with the switched-off layer (before `fake_quant_after_n_steps`) the plain linear.
#![cfg(feature = "exec")]

mod common;

use common::assert_identical;
use recipe::model::linear::Linear;
use recipe::model::qat::{self, FakeQuant};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;

const CASES: [(&str, i64); 5] = [
    ("int8_int4_g32_f32", 32),
    ("int8_int4_g16_f32", 16),
    ("int8_int4_g32_bf16", 32),
    ("int8_int4_g32_f32_one_sign", 32),
    ("int8_int4_g16_f32_flat_groups", 16),
];
const REF: &str = "torchao 0.18";

fn golden(case: &str) -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/qat/{case}.safetensors"));
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn layer(g: &HashMap<String, Tensor>, group_size: i64, on: bool) -> Linear {
    Linear {
        name: "proj".into(),
        weight: g["weight"].copy().set_requires_grad(true),
        quantized: None,
        bias: Some(g["bias"].copy().set_requires_grad(true)),
        adapter: None,
        probe: Default::default(),
        qat: Some(FakeQuant { group_size, int8_activations: true, enabled: Arc::new(AtomicBool::new(on)) }),
    }
}

#[test]
fn fake_quantizers_match_torchao_bit_for_bit() {
    for (case, group_size) in CASES {
        let g = golden(case);
        let _guard = tch::no_grad_guard();
        assert_identical(
            &format!("{case} weight_fq"),
            &qat::fake_quantize_int4_weight(&g["weight"], group_size),
            &g["weight_fq"],
            REF,
        );
        assert_identical(&format!("{case} x_fq"), &qat::fake_quantize_int8_per_token(&g["x"]), &g["x_fq"], REF);
    }
}

#[test]
fn fake_quantized_linear_forward_and_gradients_match_torchao() {
    for (case, group_size) in CASES {
        let g = golden(case);
        let lin = layer(&g, group_size, true);
        let x = g["x"].copy().set_requires_grad(true);
        let out = lin.forward(&x, true, true);
        assert_identical(&format!("{case} out"), &out.detach(), &g["out"], REF);
        (out * &g["grad_out"]).sum(None).backward();
        assert_identical(&format!("{case} grad_x"), &x.grad(), &g["grad_x"], REF);
        assert_identical(&format!("{case} grad_weight"), &lin.weight.grad(), &g["grad_weight"], REF);
        assert_identical(&format!("{case} grad_bias"), &lin.bias.as_ref().unwrap().grad(), &g["grad_bias"], REF);
    }
}

#[test]
fn switched_off_layer_is_the_plain_linear() {
    for (case, group_size) in CASES {
        let g = golden(case);
        let lin = layer(&g, group_size, false);
        let _guard = tch::no_grad_guard();
        assert_identical(&format!("{case} plain_out"), &lin.forward(&g["x"], false, true), &g["plain_out"], REF);
        // Switching on changes the output: the flag is read on every call.
        lin.qat.as_ref().unwrap().enabled.store(true, Ordering::Relaxed);
        assert_identical(&format!("{case} out"), &lin.forward(&g["x"], false, true), &g["out"], REF);
    }
}
