//! NF4 / FP4 4-bit quantization (src/model/nf4.rs) against bitsandbytes 0.50.2 on the CPU:
//! packed bytes, absmax, the nested (double-quantization) state and the dequantized weights,
//! all compared bit for bit with goldens written by scripts/reference/nf4_goldens.py. Plus a
//! round-trip error sanity check and the storage cost in bits per parameter.
#![cfg(feature = "exec")]

mod common;

use recipe::model::nf4::{self, QuantType, Quantized4};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 8] = [
    "normal_64x64",
    "normal_172x64",
    "partial_3x100",
    "odd_3x101",
    "special",
    "zero_tail_1x70",
    "bf16_257x64",
    "stories260k_gate_proj",
];
const VARIANTS: [(&str, QuantType, bool); 4] = [
    ("nf4", QuantType::Nf4, false),
    ("nf4_dq", QuantType::Nf4, true),
    ("fp4", QuantType::Fp4, false),
    ("fp4_dq", QuantType::Fp4, true),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(case: &str) -> HashMap<String, Tensor> {
    let path = root().join("tests/golden/nf4").join(format!("{case}.safetensors"));
    let mut g: HashMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
    if !g.contains_key("input") {
        let model = root().join("models/stories260k/model.safetensors");
        let weights: HashMap<String, Tensor> = Tensor::read_safetensors(&model).unwrap().into_iter().collect();
        g.insert("input".into(), weights["model.layers.0.mlp.gate_proj.weight"].shallow_clone());
    }
    g
}

/// Asserts two tensors are bit-identical to bitsandbytes' (tests/common).
fn assert_identical(what: &str, ours: &Tensor, theirs: &Tensor) {
    common::assert_identical(what, ours, theirs, "bitsandbytes");
}

/// Rebuild bitsandbytes' quantized state from the golden tensors.
fn golden_state(g: &HashMap<String, Tensor>, v: &str, quant_type: QuantType, dq: bool) -> Quantized4 {
    let input = &g["input"];
    Quantized4 {
        packed: g[&format!("{v}.packed")].shallow_clone(),
        absmax: g[&format!("{v}.absmax")].shallow_clone(),
        nested: dq.then(|| nf4::Nested {
            absmax: g[&format!("{v}.nested_absmax")].shallow_clone(),
            code: g[&format!("{v}.nested_code")].shallow_clone(),
            offset: g[&format!("{v}.offset")].double_value(&[]) as f32,
            blocksize: 256,
            first: 0,
        }),
        shape: input.size(),
        blocksize: 64,
        quant_type,
        dtype: input.kind(),
    }
}

#[test]
fn codes_match_bitsandbytes() {
    let g = golden("normal_64x64");
    assert_identical("nf4 code", &nf4::code(QuantType::Nf4), &g["nf4.code"]);
    assert_identical("fp4 code", &nf4::code(QuantType::Fp4), &g["fp4.code"]);
    assert_identical("dynamic map (create_dynamic_map)", &nf4::dynamic_map(), &g["nf4_dq.nested_code"]);
}

#[test]
fn quantize_is_bit_exact_with_bitsandbytes() {
    for case in CASES {
        let g = golden(case);
        let input = &g["input"];
        for (v, quant_type, dq) in VARIANTS {
            let what = |field: &str| format!("{case} {v} {field}");
            let q = nf4::quantize(input, 64, quant_type, dq);
            assert_eq!(q.shape, input.size());
            assert_eq!(q.dtype, input.kind());
            assert_identical(&what("packed"), &q.packed, &g[&format!("{v}.packed")]);
            assert_identical(&what("absmax"), &q.absmax, &g[&format!("{v}.absmax")]);
            match (&q.nested, dq) {
                (Some(n), true) => {
                    assert_identical(&what("nested absmax"), &n.absmax, &g[&format!("{v}.nested_absmax")]);
                    assert_identical(&what("nested code"), &n.code, &g[&format!("{v}.nested_code")]);
                    let offset = g[&format!("{v}.offset")].double_value(&[]) as f32;
                    assert_eq!(n.offset.to_bits(), offset.to_bits(), "{}", what("offset"));
                    assert_eq!(n.blocksize, 256);
                }
                (None, false) => {}
                _ => panic!("{}: nested state present = {}", what("nested"), q.nested.is_some()),
            }
            let expected = &g[&format!("{v}.dequant")];
            assert_identical(&what("dequantized"), &nf4::dequantize(&q, input.kind()), expected);
        }
    }
}

#[test]
fn dequantize_of_bitsandbytes_state_is_bit_exact() {
    // Independent of our quantizer: bitsandbytes' own packed state, our dequantization.
    for case in CASES {
        let g = golden(case);
        for (v, quant_type, dq) in VARIANTS {
            let state = golden_state(&g, v, quant_type, dq);
            let out = nf4::dequantize(&state, state.dtype);
            assert_identical(&format!("{case} {v} dequantized"), &out, &g[&format!("{v}.dequant")]);
        }
    }
}

/// The largest distance from any value in [-1, 1] to its nearest code value.
fn max_half_gap(quant_type: QuantType) -> f64 {
    let mut c = nf4::code_values(quant_type).map(f64::from);
    c.sort_by(|a, b| a.partial_cmp(b).unwrap());
    c.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(0.0, f64::max)
}

#[test]
fn round_trip_error_is_small() {
    tch::manual_seed(7);
    let w = Tensor::randn([256, 512], (Kind::Float, Device::Cpu)) * 0.02;
    let norm = w.norm().double_value(&[]);
    let mut rel = HashMap::new();
    for (v, quant_type, dq) in VARIANTS {
        let q = nf4::quantize(&w, 64, quant_type, dq);
        let back = nf4::dequantize(&q, Kind::Float);
        let err = &back - &w;
        let r = err.norm().double_value(&[]) / norm;
        // Every value lands within half a code gap (times its block's absmax) of the original;
        // with double quantization the absmax itself is approximated, so allow its error too.
        let absmax = q.absmax_f32().repeat_interleave_self_int(64, None, None).view([256, 512]);
        let exact_absmax = w.view([-1, 64]).abs().amax([1], true).expand([-1, 64], false).reshape([256, 512]);
        let bound = &absmax * max_half_gap(quant_type) + (&absmax - &exact_absmax).abs() + 1e-7;
        let worst = (err.abs() - bound).max().double_value(&[]);
        assert!(worst <= 0.0, "{v}: an element is off by more than half a code gap ({worst:e} over)");
        eprintln!("{v}: relative RMS error {r:.4}");
        rel.insert(v, r);
    }
    // NF4 is the better code for normal weights; double quantization costs almost nothing.
    assert!(rel["nf4"] < 0.11 && rel["fp4"] < 0.16, "{rel:?}");
    assert!(rel["nf4"] < rel["fp4"], "{rel:?}");
    assert!((rel["nf4_dq"] / rel["nf4"] - 1.0).abs() < 0.01, "{rel:?}");
    assert!((rel["fp4_dq"] / rel["fp4"] - 1.0).abs() < 0.01, "{rel:?}");
}

#[test]
fn bits_per_parameter_of_a_13b_mlp_layer() {
    // A [5120, 13824] layer (Llama-2-13B's MLP). 32 rows of 13824 are 6912 blocks of 64 = 27
    // whole nested blocks of 256, so the storage of R rows (R a multiple of 32) is exactly
    // linear in R: measure the real quantized tensors at 32 and 64 rows and extend to 5120.
    let (rows, cols) = (5120i64, 13824i64);
    for (dq, expected) in [(true, 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0)), (false, 4.5)] {
        let size = |r: i64| {
            let w = Tensor::randn([r, cols], (Kind::BFloat16, Device::Cpu));
            nf4::quantize(&w, 64, QuantType::Nf4, dq).storage_bytes()
        };
        let (b32, b64) = (size(32), size(64));
        let per_32_rows = b64 - b32;
        let total = b32 + (rows / 32 - 1) * per_32_rows;
        let bits = (total * 8) as f64 / (rows * cols) as f64;
        eprintln!("double_quant={dq}: {total} bytes for {rows}x{cols}, {bits:.4} bits per parameter");
        // The per-tensor constants (the 256-value code and the offset, 1028 bytes) add ~1e-4.
        assert!((bits - expected).abs() < 2e-4, "double_quant={dq}: {bits} bits per parameter, expected ~{expected}");
        if dq {
            assert!((bits - 4.127).abs() < 5e-4, "{bits}");
        } else {
            assert_eq!(bits, 4.5);
        }
    }
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
        for (v, quant_type, dq) in VARIANTS {
            let q = nf4::quantize(&g["input"].to_device(cuda), 64, quant_type, dq);
            let what = |field: &str| format!("{case} {v} on CUDA: {field}");
            assert_identical(&what("packed"), &q.packed, &g[&format!("{v}.packed")]);
            assert_identical(&what("absmax"), &q.absmax, &g[&format!("{v}.absmax")]);
            if let Some(n) = &q.nested {
                assert_identical(&what("nested absmax"), &n.absmax, &g[&format!("{v}.nested_absmax")]);
            }
            let out = nf4::dequantize(&q, q.dtype);
            assert_eq!(out.device(), cuda);
            assert_identical(&what("dequantized"), &out, &g[&format!("{v}.dequant")]);
        }
    }
}
