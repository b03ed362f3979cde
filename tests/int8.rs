//! LLM.int8 (`load_in_8bit`) weights (src/model/int8.rs) against bitsandbytes 0.50.2 on the CPU:
//! CB, SCB, both dequantization formulas, the activation quantization with outlier threshold and
//! the Linear8bitLt eval forward, all compared bit for bit with goldens written by
//! scripts/reference/int8_goldens.py; transformers' serialized tensors and quantization_config;
//! the round-trip error and the storage cost.
#![cfg(feature = "exec")]

mod common;

use recipe::model::int8::{self, Int8};
use recipe::model::weights::{self, Checkpoint};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 8] = [
    "normal_64x64",
    "normal_172x64",
    "zero_rows_8x64",
    "outliers_16x128",
    "bf16_32x64",
    "ties_4x256",
    "rows_256x2",
    "stories260k_down_proj",
];
const DOWN: &str = "model.layers.0.mlp.down_proj";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(&path).unwrap().into_iter().collect()
}

fn saved() -> HashMap<String, Tensor> {
    load(root().join("tests/golden/int8/saved_down_proj.safetensors"))
}

/// A case's golden tensors; for stories260k the input comes from the model and cb / scb from
/// what transformers saved (the script checks they are Int8Params' output).
fn golden(case: &str) -> HashMap<String, Tensor> {
    let mut g = load(root().join("tests/golden/int8").join(format!("{case}.safetensors")));
    if case == "stories260k_down_proj" {
        let model = load(root().join("models/stories260k/model.safetensors"));
        g.insert("input".into(), model[&format!("{DOWN}.weight")].shallow_clone());
        let s = saved();
        g.insert("cb".into(), s[&format!("{DOWN}.weight")].shallow_clone());
        g.insert("scb".into(), s[&format!("{DOWN}.SCB")].shallow_clone());
    }
    g
}

/// Asserts two tensors are bit-identical to bitsandbytes' (tests/common).
fn assert_identical(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_identical(what, ours, theirs, "bitsandbytes");
}

fn kind_of(name: &str) -> Kind {
    match name {
        "float32" => Kind::Float,
        "bfloat16" => Kind::BFloat16,
        "float16" => Kind::Half,
        other => panic!("dtype {other}"),
    }
}

/// bitsandbytes' state from the golden tensors.
fn golden_state(g: &HashMap<String, Tensor>) -> Int8 {
    Int8 { cb: g["cb"].shallow_clone(), scb: g["scb"].shallow_clone(), dtype: g["input"].kind() }
}

/// `mm_weight.<dtype>` goldens of a case.
fn mm_weights(g: &HashMap<String, Tensor>) -> Vec<(Kind, &Tensor)> {
    g.iter().filter_map(|(k, t)| k.strip_prefix("mm_weight.").map(|d| (kind_of(d), t))).collect()
}

#[test]
fn quantize_is_bit_exact_with_bitsandbytes() {
    let mut mm_weight_checks = 0;
    for case in CASES {
        let g = golden(case);
        let input = &g["input"];
        let q = int8::quantize(input);
        assert_eq!(q.dtype, input.kind(), "{case}");
        assert_identical(&format!("{case} CB"), &q.cb, &g["cb"]);
        assert_identical(&format!("{case} SCB"), &q.scb, &g["scb"]);
        assert_identical(&format!("{case} dequantized"), &int8::dequantize(&q, Kind::Float), &g["dequant"]);
        for (kind, expected) in mm_weights(&g) {
            assert_identical(&format!("{case} matmul weight {kind:?}"), &int8::matmul_weight(&q, kind), expected);
            mm_weight_checks += 1;
        }
    }
    assert_eq!(mm_weight_checks, 5);
}

#[test]
fn dequantize_of_bitsandbytes_state_is_bit_exact() {
    // Independent of our quantizer: bitsandbytes' own CB / SCB, our dequantization.
    for case in CASES {
        let g = golden(case);
        let state = golden_state(&g);
        assert_identical(
            &format!("{case} dequantized"),
            &int8::vectorwise_dequant(&state.cb, &state.scb),
            &g["dequant"],
        );
        for (kind, expected) in mm_weights(&g) {
            assert_identical(&format!("{case} matmul weight {kind:?}"), &int8::matmul_weight(&state, kind), expected);
        }
    }
}

#[test]
fn vectorwise_quant_in_the_input_dtype_is_bit_exact() {
    // int8_vectorwise_quant on the weight as given (fp32 / bf16, no fp16 cast first).
    let mut checked = 0;
    for case in CASES {
        let g = golden(case);
        let Some(expected_cb) = g.get("direct.cb") else { continue };
        let (cb, scb, cols) = int8::vectorwise_quant(&g["input"], 0.0);
        assert_identical(&format!("{case} direct CB"), &cb, expected_cb);
        assert_identical(&format!("{case} direct SCB"), &scb, &g["direct.scb"]);
        assert!(cols.is_none());
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// Cases with a Linear8bitLt forward golden.
fn mm_cases() -> Vec<(&'static str, HashMap<String, Tensor>)> {
    let cases: Vec<_> = CASES.iter().map(|c| (*c, golden(c))).filter(|(_, g)| g.contains_key("mm.x")).collect();
    assert_eq!(cases.len(), 4);
    cases
}

#[test]
fn activation_quantization_with_outlier_threshold_is_bit_exact() {
    for (case, g) in mm_cases() {
        let x = &g["mm.x"];
        let k = *x.size().last().unwrap();
        let (ca, sca, cols) = int8::vectorwise_quant(&x.reshape([-1, k]).to_kind(Kind::Half), 6.0);
        assert_identical(&format!("{case} CA"), &ca, &g["mm.ca"]);
        assert_identical(&format!("{case} SCA"), &sca, &g["mm.sca"]);
        assert_identical(&format!("{case} outlier columns"), &cols.unwrap(), &g["mm.outlier_cols"]);
    }
}

#[test]
fn matmul_is_bit_exact_with_linear8bitlt_eval_forward() {
    for (case, g) in mm_cases() {
        let q = int8::quantize(&g["input"]);
        let x = &g["mm.x"];
        let bias = g.get("mm.bias");
        let t6 = int8::matmul(x, &q, bias, 6.0);
        let t0 = int8::matmul(x, &q, bias, 0.0);
        assert_identical(&format!("{case} forward, threshold 6"), &t6, &g["mm.out_t6"]);
        assert_identical(&format!("{case} forward, threshold 0"), &t0, &g["mm.out_t0"]);
        // the outlier split changes the result (columns 5 and 20 hold |x| >= 6)
        assert!(t6.not_equal_tensor(&t0).any().int64_value(&[]) != 0, "{case}");
        // and both are close to the dequantized product
        let reference = x.to_kind(Kind::Float).matmul(&int8::dequantize(&q, Kind::Float).tr());
        let reference = match bias {
            Some(b) => reference + b.to_kind(Kind::Float),
            None => reference,
        };
        let err6 = (t6.to_kind(Kind::Float) - &reference).abs().max().double_value(&[]);
        let err0 = (t0.to_kind(Kind::Float) - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        eprintln!("{case}: max |forward - x @ dequant^T| = {err6:.3e} (threshold 6), {err0:.3e} (0), of {scale:.3}");
        assert!(err6 < 0.02 * scale && err6 <= err0, "{case}: {err6} {err0} {scale}");
    }
}

#[test]
fn the_two_dequantization_formulas_differ_in_the_last_bit() {
    // (CB * SCB) / 127 (int8_vectorwise_dequant) and CB * (SCB / 127) (MatMul8bitFp): both are
    // reproduced bit for bit above; here, how far apart they are.
    tch::manual_seed(3);
    let q = int8::quantize(&Tensor::randn([256, 256], (Kind::Float, Device::Cpu)));
    let a = int8::dequantize(&q, Kind::Float);
    let b = int8::matmul_weight(&q, Kind::Float);
    let differ = a.ne_tensor(&b).sum(Kind::Int64).int64_value(&[]);
    let rel = ((&a - &b).abs() / a.abs().clamp_min(1e-30)).max().double_value(&[]);
    eprintln!("{differ} of {} fp32 values differ, by at most {rel:.2e} relative", a.numel());
    assert!(differ > 0 && rel <= f64::from(f32::EPSILON), "{differ} {rel}");
}

#[test]
fn serialization_matches_transformers_save_pretrained() {
    let s = saved();
    let name = format!("{DOWN}.weight");
    let model = load(root().join("models/stories260k/model.safetensors"));
    let q = int8::quantize(&model[&name]);
    let ours = int8::to_tensors(&name, &q);
    let mut names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let mut theirs: Vec<&str> = s.keys().map(String::as_str).collect();
    theirs.sort();
    assert_eq!(names, theirs);
    for (n, t) in &ours {
        assert_identical(n, t, &s[n]);
    }

    // read() of transformers' own file, of ours written by weights::save, and of a plain model.
    let golden_dir = root().join("tests/golden/int8");
    let tmp = std::env::temp_dir().join(format!("recipe-int8-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let written = tmp.join("model.safetensors");
    weights::save(&written, &ours).unwrap();
    for (dir, file) in [(golden_dir.clone(), golden_dir.join("saved_down_proj.safetensors")), (tmp.clone(), written)] {
        let ckpt = Checkpoint::open_files(&dir, std::slice::from_ref(&file)).unwrap();
        let r = int8::read(&ckpt, &name, &[64, 172], Kind::BFloat16, Device::Cpu).unwrap().expect("quantized");
        assert_identical("read CB", &r.cb, &q.cb);
        assert_identical("read SCB", &r.scb, &q.scb);
        assert_eq!(r.dtype, Kind::BFloat16);
        assert!(ckpt.unused().is_empty(), "{}: unused {:?}", file.display(), ckpt.unused());
        let wrong = int8::read(&ckpt, &name, &[172, 64], Kind::Float, Device::Cpu);
        assert!(wrong.is_err(), "a wrong shape is refused");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    let plain = Checkpoint::open(&root().join("models/stories260k")).unwrap();
    assert!(int8::read(&plain, &name, &[64, 172], Kind::Float, Device::Cpu).unwrap().is_none());
    assert!(int8::read(&plain, "lm_head", &[512, 64], Kind::Float, Device::Cpu).is_err());

    let text = std::fs::read_to_string(golden_dir.join("quantization_config.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(int8::quantization_config(6.0), expected);
}

#[test]
fn round_trip_error_is_within_half_a_step() {
    tch::manual_seed(7);
    for kind in [Kind::Float, Kind::BFloat16] {
        let w = (Tensor::randn([256, 512], (Kind::Float, Device::Cpu)) * 0.02).to_kind(kind);
        let q = int8::quantize(&w);
        let back = int8::dequantize(&q, Kind::Float);
        let w = w.to_kind(Kind::Float);
        let err = (&back - &w).abs();
        // half a step of SCB / 127, plus the fp16 rounding of w (relative 2^-11) and of SCB, plus
        // the fp32 rounding of the dequantization
        let half_step = q.scb.unsqueeze(1) / 254.0;
        let bound = &half_step * (1.0 + 2f64.powi(-10)) + w.abs() * 2f64.powi(-11) + back.abs() * 1e-6;
        let worst = (&err - bound).max().double_value(&[]);
        assert!(worst <= 0.0, "{kind:?}: an element is off by more than half a step ({worst:e} over)");
        let rel = (&back - &w).norm().double_value(&[]) / w.norm().double_value(&[]);
        eprintln!("{kind:?}: relative RMS error {rel:.5}");
        assert!(rel < 0.01, "{rel}");
    }
}

#[test]
fn storage_is_one_byte_per_weight_plus_four_per_row() {
    for case in CASES {
        let g = golden(case);
        let q = int8::quantize(&g["input"]);
        let (out, inp) = (q.cb.size()[0], q.cb.size()[1]);
        assert_eq!(q.storage_bytes(), out * inp + 4 * out, "{case}");
    }
    // Llama-2-13B's MLP [5120, 13824]: storage is linear in the rows, so measure 32 rows.
    let (rows, cols) = (5120i64, 13824i64);
    let w = Tensor::randn([32, cols], (Kind::BFloat16, Device::Cpu));
    let per_row = int8::quantize(&w).storage_bytes() / 32;
    let bits = (per_row * rows * 8) as f64 / (rows * cols) as f64;
    eprintln!("{rows}x{cols}: {} bytes, {bits:.4} bits per parameter", per_row * rows);
    assert_eq!(bits, 8.0 + 32.0 / cols as f64);
}

#[test]
fn cuda_gives_the_cpu_bytes() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let cuda = Device::Cuda(0);
    for case in CASES {
        let g = golden(case);
        let q = int8::quantize(&g["input"].to_device(cuda));
        assert_eq!(q.cb.device(), cuda);
        assert_identical(&format!("{case} CB on CUDA"), &q.cb, &g["cb"]);
        assert_identical(&format!("{case} SCB on CUDA"), &q.scb, &g["scb"]);
        assert_identical(&format!("{case} dequantized on CUDA"), &int8::dequantize(&q, Kind::Float), &g["dequant"]);
        for (kind, expected) in mm_weights(&g) {
            assert_identical(
                &format!("{case} matmul weight {kind:?} on CUDA"),
                &int8::matmul_weight(&q, kind),
                expected,
            );
        }
        if let Some(x) = g.get("mm.x") {
            // cuBLAS sums the outlier addmm in its own order: close, not necessarily identical.
            let bias = g.get("mm.bias").map(|b| b.to_device(cuda));
            let out = int8::matmul(&x.to_device(cuda), &q, bias.as_ref(), 6.0).to_device(Device::Cpu);
            let diff = (out.to_kind(Kind::Float) - g["mm.out_t6"].to_kind(Kind::Float)).abs().max().double_value(&[]);
            eprintln!("{case}: CUDA forward max diff {diff:e}");
            assert!(diff < 1e-2, "{case}: {diff}");
        }
    }
}
