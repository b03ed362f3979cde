//! The precision policy, resolved once from the recipe's `bf16` / `fp16` / `tf32` /
//! `bnb_4bit_compute_dtype`, so the memory estimate and the executor agree and the executor never
//! reads where a value came from.
//!
//! Rules (as Axolotl resolves them):
//! - on CPU everything computes in float32, whatever the recipe says (the executor's side);
//! - on CUDA: `fp16: true` computes in float16 (dynamic loss scaling); else `bf16: true` or
//!   `bf16: auto` in bfloat16; else float32;
//! - a 4-bit base whose recipe gives `bnb_4bit_compute_dtype` computes in that dtype; unset, it
//!   follows the training precision, as Axolotl passes torch_dtype to bitsandbytes;
//! - on a GPU without bf16 (compute capability below 8.0), `bf16: auto` falls back to float16, or
//!   to float32 when the recipe wrote `fp16: false`; `bf16: true` and an explicit
//!   `bnb_4bit_compute_dtype: bfloat16` are errors there;
//! - `tf32` is applied only when the recipe gives it; otherwise libtorch's default stands.

use crate::config::Config;
use crate::config::quantization::ComputeDtype;
use crate::config::training::Switch;
use serde::Serialize;

/// A floating-point compute dtype, serialized as torch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Precision {
    #[serde(rename = "float32")]
    Fp32,
    #[serde(rename = "bfloat16")]
    Bf16,
    #[serde(rename = "float16")]
    Fp16,
}

impl Precision {
    /// torch's name: `float32`, `bfloat16`, `float16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "float32",
            Precision::Bf16 => "bfloat16",
            Precision::Fp16 => "float16",
        }
    }

    /// A config.json `torch_dtype`; float32 for anything else (what transformers loads by default).
    pub fn from_torch_dtype(name: &str) -> Precision {
        match name {
            "bfloat16" => Precision::Bf16,
            "float16" => Precision::Fp16,
            _ => Precision::Fp32,
        }
    }

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Precision::Fp32 => 4,
            Precision::Bf16 | Precision::Fp16 => 2,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ComputeDtype> for Precision {
    fn from(d: ComputeDtype) -> Precision {
        match d {
            ComputeDtype::Float32 => Precision::Fp32,
            ComputeDtype::Bfloat16 => Precision::Bf16,
            ComputeDtype::Float16 => Precision::Fp16,
        }
    }
}

/// The resolved policy. `compute` is the dtype on a CUDA GPU with bf16 (what the memory estimate
/// assumes); the other fields say what happens on a GPU without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrecisionPlan {
    /// Compute dtype on CUDA (compute capability 8.0 or newer). On CPU: float32.
    pub compute: Precision,
    /// `bf16: auto`: on a GPU without bf16, fall back to float16 with dynamic loss scaling (or
    /// float32 when `fp16_forbidden`). false with `compute: bfloat16`: such a GPU is an error.
    pub bf16_auto: bool,
    /// The recipe wrote `fp16: false`: `bf16: auto` falls back to float32, not float16.
    pub fp16_forbidden: bool,
    /// `bnb_4bit_compute_dtype` when the recipe gives it for a 4-bit base: `compute` is this,
    /// with no fallback.
    pub four_bit_compute: Option<Precision>,
    /// TF32 matmuls on or off, when the recipe gives `tf32`; unset, libtorch's default stands.
    pub tf32: Option<bool>,
}

impl PrecisionPlan {
    /// One line for `recipe plan`.
    pub fn describe(&self) -> String {
        let cuda = match (self.compute, self.four_bit_compute) {
            (Precision::Bf16, Some(_)) => {
                "bfloat16 on CUDA (bnb_4bit_compute_dtype; GPUs without bf16 are refused)".to_string()
            }
            (p, Some(_)) => format!("{p} on CUDA (bnb_4bit_compute_dtype)"),
            (Precision::Bf16, None) if self.bf16_auto && self.fp16_forbidden => {
                "bfloat16 on CUDA (bf16: auto; float32 on GPUs without bf16, as fp16: false)".to_string()
            }
            (Precision::Bf16, None) if self.bf16_auto => {
                "bfloat16 on CUDA (bf16: auto; float16 with dynamic loss scaling on GPUs without bf16)".to_string()
            }
            (Precision::Bf16, None) => "bfloat16 on CUDA (bf16: true; GPUs without bf16 are refused)".to_string(),
            (Precision::Fp16, None) => "float16 on CUDA with dynamic loss scaling".to_string(),
            (Precision::Fp32, None) => "float32 on CUDA".to_string(),
        };
        let tf32 = match self.tf32 {
            Some(true) => "; tf32 matmuls on",
            Some(false) => "; tf32 matmuls off",
            None => "",
        };
        format!("{cuda}; float32 on CPU{tf32}")
    }
}

/// Resolves the policy. `written(key)`: whether the recipe (a file, a preset or `--set`) gives the
/// top-level `key`, rather than leaving its default.
pub fn resolve(c: &Config, written: &dyn Fn(&str) -> bool) -> PrecisionPlan {
    let t = &c.training;
    // A DeepSpeed config's explicit `bf16.enabled` / `fp16.enabled` settle what the recipe leaves
    // open (`auto`, or unwritten); a disagreement with the recipe is an error (config/rules.rs).
    let ds = c.distributed.deepspeed_config.as_ref();
    let from_file = |enabled: Option<bool>, recipe: Switch| match enabled {
        Some(true) => Switch::On,
        Some(false) => Switch::Off,
        None => recipe,
    };
    let fp16 = from_file(ds.and_then(|d| d.fp16_enabled()), t.fp16);
    let bf16 = from_file(ds.and_then(|d| d.bf16_enabled()), t.bf16);
    let training = match (fp16, bf16) {
        (Switch::On, _) => Precision::Fp16,
        (_, Switch::On | Switch::Auto) => Precision::Bf16,
        _ => Precision::Fp32,
    };
    let four_bit_compute = (c.quantization.load_in_4bit && written("bnb_4bit_compute_dtype"))
        .then(|| Precision::from(c.quantization.bnb_4bit_compute_dtype));
    PrecisionPlan {
        compute: four_bit_compute.unwrap_or(training),
        bf16_auto: four_bit_compute.is_none() && training == Precision::Bf16 && bf16 == Switch::Auto,
        fp16_forbidden: fp16 == Switch::Off && (written("fp16") || ds.and_then(|d| d.fp16_enabled()) == Some(false)),
        four_bit_compute,
        tf32: (t.tf32 != Switch::Auto && written("tf32")).then_some(t.tf32 == Switch::On),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(edit: impl FnOnce(&mut Config), written: &[&str]) -> PrecisionPlan {
        let mut c = Config::default();
        edit(&mut c);
        resolve(&c, &|k| written.contains(&k))
    }

    #[test]
    fn names_are_the_serialized_names() {
        for p in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
    }

    #[test]
    fn defaults_are_bf16_auto_with_fp16_fallback_and_no_tf32() {
        let p = resolved(|_| {}, &[]);
        assert_eq!(p.compute, Precision::Bf16);
        assert!(p.bf16_auto && !p.fp16_forbidden);
        assert_eq!((p.four_bit_compute, p.tf32), (None, None));
    }

    #[test]
    fn fp16_wins_and_bf16_false_is_fp32() {
        assert_eq!(resolved(|c| c.training.fp16 = Switch::On, &["fp16"]).compute, Precision::Fp16);
        let fp16 = resolved(|c| c.training.fp16 = Switch::On, &["fp16"]);
        assert!(!fp16.bf16_auto && !fp16.fp16_forbidden);
        let off = resolved(|c| c.training.bf16 = Switch::Off, &["bf16"]);
        assert_eq!((off.compute, off.bf16_auto), (Precision::Fp32, false));
        let on = resolved(|c| c.training.bf16 = Switch::On, &["bf16"]);
        assert_eq!((on.compute, on.bf16_auto), (Precision::Bf16, false));
    }

    #[test]
    fn only_a_written_fp16_false_forbids_the_fallback() {
        assert!(resolved(|_| {}, &["fp16"]).fp16_forbidden);
        assert!(!resolved(|_| {}, &[]).fp16_forbidden);
        assert!(!resolved(|c| c.training.fp16 = Switch::Auto, &["fp16"]).fp16_forbidden);
    }

    #[test]
    fn an_explicit_4bit_compute_dtype_wins_only_for_4bit_bases() {
        let qlora = |c: &mut Config| {
            c.quantization.load_in_4bit = true;
            c.quantization.bnb_4bit_compute_dtype = ComputeDtype::Float16;
        };
        let p = resolved(qlora, &["bnb_4bit_compute_dtype"]);
        assert_eq!((p.compute, p.four_bit_compute, p.bf16_auto), (Precision::Fp16, Some(Precision::Fp16), false));
        // Unset, it follows the training precision (the default bfloat16 is not "given").
        let p = resolved(qlora, &[]);
        assert_eq!((p.compute, p.four_bit_compute, p.bf16_auto), (Precision::Bf16, None, true));
        let dense =
            resolved(|c| c.quantization.bnb_4bit_compute_dtype = ComputeDtype::Float32, &["bnb_4bit_compute_dtype"]);
        assert_eq!((dense.compute, dense.four_bit_compute), (Precision::Bf16, None));
    }

    #[test]
    fn tf32_only_when_given() {
        assert_eq!(resolved(|_| {}, &[]).tf32, None);
        assert_eq!(resolved(|_| {}, &["tf32"]).tf32, Some(false));
        assert_eq!(resolved(|c| c.training.tf32 = Switch::On, &["tf32"]).tf32, Some(true));
        assert_eq!(resolved(|c| c.training.tf32 = Switch::Auto, &["tf32"]).tf32, None);
    }

    #[test]
    fn the_plan_line_names_the_fallback() {
        assert!(resolved(|_| {}, &[]).describe().contains("float16 with dynamic loss scaling on GPUs without bf16"));
        assert!(resolved(|_| {}, &["fp16"]).describe().contains("float32 on GPUs without bf16"));
        assert!(resolved(|c| c.training.tf32 = Switch::On, &["tf32"]).describe().ends_with("; tf32 matmuls on"));
    }
}
