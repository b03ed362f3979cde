//! transformers' bitsandbytes serialization of 4-bit weights, both ways. A quantized `W` is
//! stored as `W` (packed codes), `W.absmax`, `W.quant_map`, with double quantization also
//! `W.nested_absmax` and `W.nested_quant_map`, and `W.quant_state.bitsandbytes__nf4` (or `__fp4`):
//! the remaining fields as UTF-8 JSON bytes (bitsandbytes' `QuantState.as_dict(packed=True)`).
//! config.json carries the `quantization_config`. `recipe quantize` writes such folders and the
//! executor loads them without quantizing again.

use super::nf4::{self, Nested, QuantType, Quantized4};
use super::weights::Checkpoint;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

fn kind_of(name: &str) -> Result<Kind, String> {
    match name {
        "float32" => Ok(Kind::Float),
        "bfloat16" => Ok(Kind::BFloat16),
        "float16" => Ok(Kind::Half),
        other => Err(format!("quantized weight dtype `{other}` is not supported")),
    }
}

/// The tensors that store `q` under `name` (e.g. `model.layers.0.mlp.up_proj.weight`). Not for a
/// slice of a larger weight whose double-quantized state starts inside a nested block.
pub fn to_tensors(name: &str, q: &Quantized4) -> Vec<(String, Tensor)> {
    assert!(q.nested.as_ref().is_none_or(|n| n.first == 0), "`{name}`: a slice's nested state is not stored alone");
    let mut state = json!({
        "quant_type": q.quant_type.name(),
        "blocksize": q.blocksize,
        "dtype": dtype_name(q.dtype),
        "shape": q.shape,
    });
    let mut out = vec![
        (name.to_string(), q.packed.shallow_clone()),
        (format!("{name}.absmax"), q.absmax.shallow_clone()),
        (format!("{name}.quant_map"), nf4::code(q.quant_type)),
    ];
    if let Some(n) = &q.nested {
        out.push((format!("{name}.nested_absmax"), n.absmax.shallow_clone()));
        out.push((format!("{name}.nested_quant_map"), n.code.shallow_clone()));
        if let Some(o) = state.as_object_mut() {
            o.insert("nested_blocksize".into(), n.blocksize.into());
            o.insert("nested_dtype".into(), "float32".into());
            o.insert("nested_offset".into(), f64::from(n.offset).into());
        }
    }
    let bytes = state.to_string().into_bytes();
    out.push((format!("{name}.quant_state.bitsandbytes__{}", q.quant_type.name()), Tensor::from_slice(&bytes)));
    out
}

/// The quantized weight `name` of a pre-quantized checkpoint, if it holds one.
pub fn read(ckpt: &Checkpoint, name: &str, shape: &[i64], device: Device) -> Result<Option<Quantized4>, String> {
    let state_name =
        ["nf4", "fp4"].iter().map(|t| format!("{name}.quant_state.bitsandbytes__{t}")).find(|n| ckpt.contains(n));
    let Some(state_name) = state_name else { return Ok(None) };
    let len = ckpt.shape(&state_name).map(|s| s.iter().product::<i64>()).unwrap_or(0);
    let raw = ckpt.load(&state_name, &[len], Kind::Uint8, Device::Cpu)?;
    let bytes: Vec<u8> = Vec::<u8>::try_from(&raw).map_err(|e| format!("`{state_name}`: {e}"))?;
    let state: Value = serde_json::from_slice(&bytes).map_err(|e| format!("`{state_name}`: not JSON: {e}"))?;
    let field = |k: &str| state.get(k).ok_or_else(|| format!("`{state_name}`: no `{k}`"));
    let quant_type = match field("quant_type")?.as_str() {
        Some("nf4") => QuantType::Nf4,
        Some("fp4") => QuantType::Fp4,
        other => return Err(format!("`{state_name}`: quant_type {other:?} is not nf4 or fp4")),
    };
    let stored_shape: Vec<i64> =
        field("shape")?.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default();
    if stored_shape != shape {
        return Err(format!("`{name}` is quantized with shape {stored_shape:?}, the model expects {shape:?}"));
    }
    let blocksize = field("blocksize")?.as_i64().ok_or_else(|| format!("`{state_name}`: blocksize"))?;
    let dtype = kind_of(field("dtype")?.as_str().unwrap_or_default())?;
    let n: i64 = shape.iter().product();
    let blocks = (n + blocksize - 1) / blocksize;
    let packed = ckpt.load(name, &[(n + 1) / 2, 1], Kind::Uint8, device)?;
    let nested = match state.get("nested_offset").and_then(Value::as_f64) {
        Some(offset) => {
            let nb = state.get("nested_blocksize").and_then(Value::as_i64).unwrap_or(256);
            Some(Nested {
                absmax: ckpt.load(&format!("{name}.nested_absmax"), &[(blocks + nb - 1) / nb], Kind::Float, device)?,
                code: ckpt.load(&format!("{name}.nested_quant_map"), &[256], Kind::Float, device)?,
                offset: offset as f32,
                blocksize: nb,
                first: 0,
            })
        }
        None => None,
    };
    let absmax_kind = if nested.is_some() { Kind::Uint8 } else { Kind::Float };
    let absmax = ckpt.load(&format!("{name}.absmax"), &[blocks], absmax_kind, device)?;
    // The code map is fixed by quant_type: a different one is a different format.
    let map = ckpt.load(&format!("{name}.quant_map"), &[16], Kind::Float, Device::Cpu)?;
    if map.not_equal_tensor(&nf4::code(quant_type)).any().int64_value(&[]) != 0 {
        return Err(format!("`{name}.quant_map` is not bitsandbytes' {} code", quant_type.name()));
    }
    Ok(Some(Quantized4 { packed, absmax, nested, shape: shape.to_vec(), blocksize, quant_type, dtype }))
}

/// config.json's `quantization_config` for a 4-bit model, as transformers writes it.
pub fn quantization_config(quant_type: QuantType, double_quant: bool, compute_dtype: &str) -> Value {
    json!({
        "quant_method": "bitsandbytes",
        "load_in_4bit": true,
        "load_in_8bit": false,
        "bnb_4bit_quant_type": quant_type.name(),
        "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": compute_dtype,
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_threshold": 6.0,
        "llm_int8_skip_modules": null,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false
    })
}
