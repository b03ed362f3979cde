//! LLM.int8 (`load_in_8bit`) weights: row-wise ("vector-wise") absmax int8 quantization,
//! bit-exact with bitsandbytes 0.50.2 on the CPU, and transformers' serialization of them. Written
//! with tensor ops only, so the same code runs on CUDA (and gives the CPU path's bytes there).
//!
//! What bitsandbytes 0.50.2 runs on the CPU (its pure-torch "default" kernels in
//! `bitsandbytes/backends/default/ops.py` and `_ops.py`), and what is reproduced here (checked
//! against its output by `tests/int8.rs`, goldens from `scripts/reference/int8_goldens.py`):
//!
//! * **Weight quantization** ([`quantize`]): transformers' `load_in_8bit` wraps each weight in
//!   `Int8Params(w).to(device)`, whose `_quantize` first casts the weight to **fp16** (so a
//!   weight that does not fit fp16 becomes inf there; real weights do), then runs
//!   `int8_vectorwise_quant` with threshold 0 (see [`vectorwise_quant`]): per row
//!   `SCB = max |w|` (in fp16, then fp32), `CB = int8(round(w * (127 / SCB)))` where
//!   `127 / SCB` is Python's `__rtruediv__`, i.e. `reciprocal(SCB) * 127` (two fp32 roundings),
//!   the product is in fp32 and `round` is half to even. An all-zero row has `SCB = 0`, `0 * inf`
//!   is NaN, and bitsandbytes' cast gives 0 there; this code maps NaN to 0 explicitly, so every
//!   device agrees.
//! * **Dequantization**, two formulas that differ in the last fp32 bit for about a fifth of the
//!   weights (both reproduced):
//!   - [`dequantize`]: `int8_vectorwise_dequant(CB, SCB) = (CB * SCB[:, None]) * 7.874015718698502e-3`
//!     in fp32 (the constant is 1/127 rounded to fp32), what transformers'
//!     `dequantize_bnb_weight` and peft's merge use, then cast to the requested dtype.
//!   - [`matmul_weight`]: `CB.to(dtype) * (SCB[:, None] * (1/127))` computed in fp32 and rounded
//!     once to `dtype`: the weight that `MatMul8bitFp` (a `Linear8bitLt` in training mode on the
//!     CPU) feeds to `F.linear`, and that `MatMul8bitLt`'s backward multiplies the output
//!     gradient with (on any device).
//! * **Serialization** ([`to_tensors`], [`read`]): `save_pretrained` of a `Linear8bitLt` (its
//!   `_save_to_state_dict`, transformers 5.24 keeps it) writes, for module `M`, `M.weight` (int8
//!   `[out, in]`, CB), `M.SCB` (fp32 `[out]`) and `M.weight_format` (uint8 scalar 0 = "row",
//!   kept for backward compatibility; bitsandbytes refuses any other layout on load), plus
//!   `M.bias` untouched. config.json carries the `quantization_config` of
//!   [`quantization_config`].
//!
//! **Outliers.** LLM.int8's outlier decomposition (`llm_int8_threshold`, 6.0 by default) is an
//! *inference-time split of the activations*, not part of the stored weight: in the forward
//! of a `Linear8bitLt` (`MatMul8bitLt`), the input columns holding any `|x| >= threshold` are
//! taken out of the int8 product and multiplied in the input's precision with the dequantized
//! matching weight columns. It is implemented here ([`matmul`], cheap on top of the above), bit
//! exact with the CPU eval forward. The int32 product is computed exactly (fp32 matmul while
//! `in * 127 * 127 < 2^24`, where that is exact, float64 beyond): bitsandbytes uses
//! `torch._int_mm` on an AVX-512 CPU (exact) and an fp32 matmul otherwise, which could only
//! round for `in > 1040` with partial sums above 2^24 in magnitude (not seen on real data).
//! In training mode on the CPU bitsandbytes does not split anything: it runs `F.linear(x,
//! matmul_weight(q, x.kind()), bias)`.
//!
//! On CUDA, bitsandbytes runs its own kernels (`cint8_vector_quant`, cuBLASLt int8 GEMM,
//! `cdequant_mm_int32_fp16` which rounds through fp16), not compared here; this module gives the
//! CPU path's bytes on every device.

use super::weights::Checkpoint;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// 1/127 as bitsandbytes writes it in `int8_vectorwise_dequant` (the fp32 value nearest 1/127;
/// its `1.0 / 127.0` rounds to the same fp32 scalar when it multiplies an fp32 tensor).
pub const INV_127: f64 = 7.874015718698502e-3;
/// The shape of a 0-d tensor.
const SCALAR: &[i64] = &[];
/// 1/127^2 as `int8_mm_dequant` writes it.
const INV_127_SQ: f64 = 6.200124e-05;

/// A weight quantized as LLM.int8 stores it (bitsandbytes' `Int8Params` after `.to(device)`).
pub struct Int8 {
    /// int8 `[out, in]`, the row-wise quantized weight (`CB`, saved as `weight`).
    pub cb: Tensor,
    /// fp32 `[out]`, the absmax of each row (`SCB`).
    pub scb: Tensor,
    /// The original dtype of the weight (what the model computes in).
    pub dtype: Kind,
}

/// bitsandbytes' `int8_vectorwise_quant(a, threshold)` (2-D `a`, any float dtype, quantized as
/// given: transformers passes fp16) as its CPU kernel computes it: `(CB int8 [rows, cols],
/// SCB fp32 [rows], outlier columns)`. With `threshold > 0` the entries with `|a| >= threshold`
/// are zeroed before the row absmax, the columns holding any of them are returned (int64,
/// ascending; empty when none) and, when there is more than one row, zeroed in `CB`. With
/// `threshold == 0` there are no outlier columns (`None`).
pub fn vectorwise_quant(a: &Tensor, threshold: f64) -> (Tensor, Tensor, Option<Tensor>) {
    assert_eq!(a.dim(), 2, "int8_vectorwise_quant takes a 2-D tensor, not {:?}", a.size());
    assert!(a.is_floating_point(), "int8_vectorwise_quant takes a float tensor, not {:?}", a.kind());
    tch::no_grad(|| {
        let rows = a.size()[0];
        let mut outlier_cols = None;
        let mut a = a.shallow_clone();
        if threshold > 0.0 {
            let outliers = a.abs().ge(threshold);
            if outliers.any().int64_value(&[]) != 0 {
                outlier_cols = Some(outliers.any_dim(0, false).argwhere().view([-1]));
                a = a.masked_fill(&outliers, 0.0);
            } else {
                outlier_cols = Some(Tensor::empty([0], (Kind::Int64, a.device())));
            }
        }
        // max |a| in a's dtype (exact), then fp32; `127.0 / stats` is reciprocal(stats) * 127.
        let row_stats = a.abs().amax([1], false).to_kind(Kind::Float);
        let scale = row_stats.unsqueeze(-1).reciprocal() * 127.0;
        let scaled = (&a * scale).round();
        // 0 * inf (an all-zero row) is NaN; bitsandbytes' CPU cast turns it into 0.
        let mut out = scaled.masked_fill(&scaled.isnan(), 0.0).to_kind(Kind::Int8);
        if let Some(cols) = outlier_cols.as_ref().filter(|c| rows > 1 && c.numel() > 0) {
            out = out.index_fill(1, cols, 0);
        }
        (out, row_stats, outlier_cols)
    })
}

/// bitsandbytes' `int8_vectorwise_dequant(cb, scb)`: `(cb * scb[:, None]) * (1/127)` in fp32.
pub fn vectorwise_dequant(cb: &Tensor, scb: &Tensor) -> Tensor {
    tch::no_grad(|| cb * scb.view([-1, 1]) * INV_127)
}

/// Quantize a weight `[out, in]` (fp32, bf16 or fp16) as `load_in_8bit` does: cast to fp16,
/// then [`vectorwise_quant`] with threshold 0. The result lives on `w`'s device.
pub fn quantize(w: &Tensor) -> Int8 {
    let dtype = w.kind();
    assert!(
        matches!(dtype, Kind::Float | Kind::BFloat16 | Kind::Half),
        "int8 quantization takes fp32, bf16 or fp16 weights, not {dtype:?}"
    );
    assert_eq!(w.dim(), 2, "int8 quantization takes a 2-D weight [out, in], not {:?}", w.size());
    let (cb, scb, _) = vectorwise_quant(&w.to_kind(Kind::Half), 0.0);
    Int8 { cb, scb, dtype }
}

/// The weight as transformers' `dequantize_bnb_weight` gives it ([`vectorwise_dequant`], fp32),
/// cast to `kind` (round to nearest even).
pub fn dequantize(q: &Int8, kind: Kind) -> Tensor {
    vectorwise_dequant(&q.cb, &q.scb).to_kind(kind)
}

/// The weight the matmul sees in bitsandbytes' `MatMul8bitFp` (CPU training) and
/// `MatMul8bitLt.backward`: `CB.to(kind).mul_(SCB[:, None] * (1/127))`, computed in fp32 (or in
/// `kind` if wider) and rounded once to `kind`.
pub fn matmul_weight(q: &Int8, kind: Kind) -> Tensor {
    tch::no_grad(|| {
        let mut w = q.cb.to_kind(kind);
        w *= q.scb.unsqueeze(1) * INV_127;
        w
    })
}

/// `x @ W^T + bias` as a `Linear8bitLt` in eval mode computes it (`MatMul8bitLt.forward`, the
/// CPU kernels): `x` (any leading shape, last dimension `in`) is quantized row-wise in fp16 with
/// `threshold` (0 disables the outlier split), the int8 product is taken exactly in int32 and
/// scaled `acc * (SCA[:, None] * SCB[None, :]) * (1/127^2)` in fp32, plus `bias` (cast to `x`'s
/// dtype), cast to `x`'s dtype; the outlier columns of `x` (at their original precision) are then
/// added through `addmm` with the matching columns of `dequantize(q)` in `x`'s dtype.
pub fn matmul(x: &Tensor, q: &Int8, bias: Option<&Tensor>, threshold: f64) -> Tensor {
    tch::no_grad(|| {
        let shape = x.size();
        let k = *shape.last().expect("int8 matmul of a 0-d input");
        let n = q.cb.size()[0];
        assert_eq!(q.cb.size()[1], k, "int8 matmul: input has {k} features, the weight {:?}", q.cb.size());
        let kind = x.kind();
        let a = x.reshape([-1, k]);
        let (ca, sca, cols) = vectorwise_quant(&a.to_kind(Kind::Half), threshold);
        // int8_linear_matmul: exact integers (see the module doc).
        let acc_kind = if k * 127 * 127 < (1 << 24) { Kind::Float } else { Kind::Double };
        let acc = ca.to_kind(acc_kind).matmul(&q.cb.to_kind(acc_kind).tr()).to_kind(Kind::Int);
        // int8_mm_dequant
        let mut out = acc * (sca.view([-1, 1]) * q.scb.view([1, -1])) * INV_127_SQ;
        if let Some(b) = bias {
            out += b.to_kind(kind);
        }
        let mut out = out.to_kind(kind);
        // int8_mixed_scaled_mm: the outlier columns in the input's precision
        if let Some(cols) = cols.filter(|c| threshold > 0.0 && c.numel() > 0) {
            let sub_a = a.index_select(1, &cols);
            let sub_b = vectorwise_dequant(&q.cb.index_select(1, &cols), &q.scb).to_kind(kind).tr();
            out = out.addmm(&sub_a, &sub_b);
        }
        let mut out_shape = shape[..shape.len() - 1].to_vec();
        out_shape.push(n);
        out.view(out_shape.as_slice())
    })
}

impl Int8 {
    /// Bytes held by the quantized state: 1 per weight (CB) + 4 per row (SCB).
    pub fn storage_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        bytes(&self.cb) + bytes(&self.scb)
    }

    /// Move both tensors to `device`.
    pub fn to_device(&self, device: Device) -> Int8 {
        Int8 { cb: self.cb.to_device(device), scb: self.scb.to_device(device), dtype: self.dtype }
    }
}

/// `model.layers.0.mlp.down_proj.weight` -> `model.layers.0.mlp.down_proj.`
fn module_prefix(name: &str) -> Result<&str, String> {
    name.strip_suffix("weight")
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .ok_or_else(|| format!("`{name}`: an 8-bit weight's name must end in `weight`"))
}

/// The tensors `save_pretrained` writes for `q` stored under `name` (e.g.
/// `model.layers.0.mlp.up_proj.weight`): `name` (CB, int8), `<module>.SCB` (fp32) and
/// `<module>.weight_format` (uint8 scalar 0). Panics if `name` does not end in `weight`.
pub fn to_tensors(name: &str, q: &Int8) -> Vec<(String, Tensor)> {
    let prefix = module_prefix(name).unwrap_or_else(|e| panic!("{e}"));
    vec![
        (name.to_string(), q.cb.shallow_clone()),
        (format!("{prefix}SCB"), q.scb.shallow_clone()),
        (format!("{prefix}weight_format"), Tensor::from_slice(&[0u8]).view(SCALAR)),
    ]
}

/// The 8-bit weight `name` (`[out, in]` = `shape`) of a pre-quantized checkpoint, if it holds one
/// (that is, if `<module>.SCB` is there), with `dtype` as its compute dtype.
pub fn read(ckpt: &Checkpoint, name: &str, shape: &[i64], dtype: Kind, device: Device) -> Result<Option<Int8>, String> {
    let prefix = module_prefix(name)?;
    let scb_name = format!("{prefix}SCB");
    if !ckpt.contains(&scb_name) {
        return Ok(None);
    }
    if shape.len() != 2 {
        return Err(format!("`{name}` is 8-bit quantized but the model expects shape {shape:?}, not [out, in]"));
    }
    let format_name = format!("{prefix}weight_format");
    if ckpt.contains(&format_name) {
        let format = ckpt.load(&format_name, SCALAR, Kind::Int64, Device::Cpu)?.int64_value(&[]);
        if format != 0 {
            return Err(format!("`{format_name}` is {format}: only the row-major format (0) is supported"));
        }
    }
    // Checkpoint::load converts to the asked kind, so check that the stored values are int8 codes
    // (a float weight next to a stray SCB would otherwise be truncated silently).
    let values = ckpt.load(name, shape, Kind::Float, device)?;
    let bad = values.round().ne_tensor(&values).logical_or(&values.lt(-128.0)).logical_or(&values.gt(127.0));
    if bad.any().int64_value(&[]) != 0 {
        return Err(format!("`{name}` has an `SCB` but does not hold int8 values"));
    }
    let cb = values.to_kind(Kind::Int8);
    let scb = ckpt.load(&scb_name, &shape[..1], Kind::Float, device)?;
    Ok(Some(Int8 { cb, scb, dtype }))
}

/// config.json's `quantization_config` for an 8-bit model, as transformers 5.24 writes it.
pub fn quantization_config(threshold: f64) -> Value {
    json!({
        "_load_in_4bit": false,
        "_load_in_8bit": true,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": false,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": threshold,
        "load_in_4bit": false,
        "load_in_8bit": true,
        "quant_method": "bitsandbytes"
    })
}
