//! torchao's low-bit AdamW (`torchao.optim.AdamW8bit` / `AdamW4bit`), what transformers' Trainer
//! runs for `adamw_torch_8bit` / `adamw_torch_4bit`: the state layout and the step of torchao
//! 0.18's `single_param_adam`, op for op, so a CPU step equals torchao's bit for bit
//! (tests/optim_torchao.rs, goldens from scripts/reference/torchao_adamw_goldens.py).
//!
//! - Both moments are blockwise quantized with one fp32 scale per block of 256 values (the
//!   Trainer's `block_size`; torchao's own 4-bit default of 128 is not what the Trainer passes):
//!   `scale = max(absmax, 1e-12)`, each value divided by it and given the nearest code of a map
//!   (a branchless binary search, ties rounding up). 8-bit: the first moment in the signed dynamic
//!   map, the second in the unsigned one (the maps of bitsandbytes, `create_dynamic_map`), one byte
//!   a value. 4-bit: the signed dynamic map with 3 exponent bits, and for the second moment the
//!   linear map `linspace(0, 1, 17)[1:]` (no zero); two codes a byte, flattened, high nibble first.
//! - A tensor under 4,096 values, or whose size is not a multiple of the block, keeps
//!   full-precision moments in the parameter's own dtype (fp32 for recipe's trainable weights).
//! - The step runs in fp32 whatever the parameter's dtype: decoupled weight decay
//!   (`p - lr·wd·p`), both moments moved by torch's lerp with the fp32 corrections
//!   `1 - β^step` (step and lr are fp32 tensors in torchao), then the update
//!   `lr·(m / c1) / (sqrt(v) / sqrt(c2) + eps)`, rounded to the parameter's dtype once. The moments
//!   used by the update are the unquantized new ones; only the stored copy is quantized.
//! - torchao's one random part, bf16 stochastic rounding, is off unless `optim_args` asks for it,
//!   which recipe refuses: nothing here is random.
//!
//! torchao compiles its step (`torch.compile`); on the CPU Inductor emits the same fp32 operations
//! in the same order, with no fused multiply-adds and IEEE square roots. That is what the ops below
//! compute: torch's own `lerp` (a fused multiply-add) and fp32 `sqrt` (MKL's) would each differ
//! from it in the last bit now and then. On CUDA the same ops run as libtorch kernels, equal to
//! torchao's Triton kernel up to rounding. torchao counts steps per parameter (a parameter without
//! a gradient in a step does not count it); recipe counts optimizer steps, the same count for
//! every parameter that gets a gradient every step, as trainable parameters do.

use super::optimizer::Hyper;
use crate::model::nf4;
use tch::{Device, Kind, Tensor};

/// Values per quantization block (transformers' Trainer passes `block_size=256` to both).
pub const BLOCK: i64 = 256;
/// The smallest tensor that gets quantized moments (torchao follows bitsandbytes).
pub const MIN_QUANTIZED: i64 = 4096;

/// Bits per stored moment value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    Eight,
    Four,
}

impl Bits {
    fn levels(self) -> i64 {
        match self {
            Bits::Eight => 256,
            Bits::Four => 16,
        }
    }
}

/// torchao's code map (fp32, ascending, on the CPU): `signed` for the first moment.
pub fn qmap(bits: Bits, signed: bool) -> Tensor {
    match (bits, signed) {
        (Bits::Eight, true) => nf4::dynamic_map(),
        (Bits::Eight, false) => nf4::unsigned_dynamic_map(),
        (Bits::Four, true) => dynamic_map(3, 4),
        (Bits::Four, false) => Tensor::linspace(0.0, 1.0, 17, (Kind::Float, Device::Cpu)).narrow(0, 1, 16),
    }
}

/// torchao's signed `create_dynamic_map(True, max_exponent_bits, total_bits)` for maps whose
/// exponent bits fill the non-sign bits (no extra linear items), in fp32 as torch computes it.
fn dynamic_map(max_exponent_bits: i64, total_bits: i64) -> Tensor {
    let non_sign_bits = total_bits - 1;
    assert_eq!(non_sign_bits, max_exponent_bits, "maps with extra linear items are not used");
    let mut data: Vec<f32> = Vec::new();
    for i in 0..max_exponent_bits {
        let items = (1i64 << (i + non_sign_bits - max_exponent_bits)) + 1;
        let b = Tensor::linspace(0.1, 1.0, items, (Kind::Float, Device::Cpu));
        let means = (b.narrow(0, 0, items - 1) + b.narrow(0, 1, items - 1)) / 2.0;
        // Python's `10 ** k` (a correctly rounded double), times fp32 means.
        let scale = 10f64.powf((-(max_exponent_bits - 1) + i) as f64);
        data.extend(Vec::<f32>::try_from(&means * scale).unwrap());
        data.extend(Vec::<f32>::try_from(&means * -scale).unwrap());
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len() as i64, 1 << total_bits);
    data.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Tensor::from_slice(&data)
}

/// One moment of one parameter.
pub enum Moment {
    /// Full precision, in the parameter's dtype.
    Full(Tensor),
    Quantized(Quantized),
}

/// A blockwise quantized moment as torchao's `OptimState8bit` / `OptimState4bit` holds it.
pub struct Quantized {
    /// uint8: one code a value shaped like the parameter (8-bit); two a byte, flat (4-bit).
    pub codes: Tensor,
    /// fp32 `[numel / 256]`.
    pub scale: Tensor,
    /// The code map, on the parameter's device.
    qmap: Tensor,
    bits: Bits,
    shape: Vec<i64>,
}

impl Moment {
    /// Zeros for `param`, quantized where torchao quantizes.
    pub fn zeros(param: &Tensor, bits: Bits, signed: bool) -> Moment {
        let n = param.numel() as i64;
        if n < MIN_QUANTIZED || n % BLOCK != 0 {
            return Moment::Full(param.zeros_like().detach());
        }
        let device = param.device();
        let codes = match bits {
            Bits::Eight => Tensor::zeros(param.size(), (Kind::Uint8, device)),
            Bits::Four => Tensor::zeros([n / 2], (Kind::Uint8, device)),
        };
        Moment::Quantized(Quantized {
            codes,
            scale: Tensor::zeros([n / BLOCK], (Kind::Float, device)),
            qmap: qmap(bits, signed).to_device(device),
            bits,
            shape: param.size(),
        })
    }

    /// The moment in fp32 (torchao's `state.float()`).
    pub fn value(&self) -> Tensor {
        match self {
            Moment::Full(t) => t.to_kind(Kind::Float),
            Moment::Quantized(q) => q.dequantize(),
        }
    }

    /// `state.copy_(values)`: rounded to the dtype, or quantized.
    pub fn store(&mut self, values: &Tensor) {
        match self {
            Moment::Full(t) => {
                t.copy_(values);
            }
            Moment::Quantized(q) => q.quantize(values),
        }
    }

    pub fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            Moment::Full(t) => size(t),
            Moment::Quantized(q) => size(&q.codes) + size(&q.scale),
        }
    }

    /// Checkpoint tensors: `NAME` (full) or `NAME.codes` and `NAME.scale`.
    pub fn named(&self, name: String) -> Vec<(String, Tensor)> {
        match self {
            Moment::Full(t) => vec![(name, t.shallow_clone())],
            Moment::Quantized(q) => {
                vec![
                    (format!("{name}.codes"), q.codes.shallow_clone()),
                    (format!("{name}.scale"), q.scale.shallow_clone()),
                ]
            }
        }
    }

    pub fn load(&mut self, name: &str, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let read = |t: &mut Tensor, n: &str| super::optimizer::load_into(t, n, ckpt);
        match self {
            Moment::Full(t) => read(t, name),
            Moment::Quantized(q) => {
                read(&mut q.codes, &format!("{name}.codes"))?;
                read(&mut q.scale, &format!("{name}.scale"))
            }
        }
    }
}

impl Quantized {
    /// `qmap[codes] * scale` per block, fp32, shaped like the parameter.
    fn dequantize(&self) -> Tensor {
        let codes = self.codes.to_kind(Kind::Int64);
        let codes = match self.bits {
            Bits::Eight => codes.view([-1]),
            // High nibble first: torchao's `stack([codes >> 4, codes & 15], -1)`.
            Bits::Four => Tensor::stack(&[codes.floor_divide_scalar(16), codes.remainder(16)], -1).view([-1]),
        };
        let values = self.qmap.index_select(0, &codes).view([-1, BLOCK]) * self.scale.view([-1, 1]);
        values.view(self.shape.as_slice())
    }

    /// torchao's `scale_tensor` then `quantize_{8,4}bit_with_qmap`.
    fn quantize(&mut self, values: &Tensor) {
        let blocks = values.to_kind(Kind::Float).reshape([-1, BLOCK]);
        let scale = blocks.abs().amax([-1], false).clamp_min(1e-12);
        let scaled = &blocks / scale.view([-1, 1]);
        let levels = self.bits.levels();
        let at = |codes: &Tensor| self.qmap.index_select(0, &codes.view([-1])).view_as(codes);
        // Branchless binary search: the largest code whose value is at most the input.
        let mut step = levels / 2;
        let mut codes = scaled.ge_tensor(&self.qmap.get(step)).to_kind(Kind::Int64) * step;
        while step > 1 {
            step /= 2;
            let probe = at(&(&codes + step));
            codes += scaled.ge_tensor(&probe).to_kind(Kind::Int64) * step;
        }
        // Then the next code up where the input is at least halfway to it.
        let up = (&codes + 1).clamp_max(levels - 1);
        let (down_value, up_value) = (at(&codes), at(&up));
        let residual = &scaled - &down_value;
        let codes = up.where_self(&residual.ge_tensor(&((&up_value - &down_value) * 0.5)), &codes);
        let codes = match self.bits {
            Bits::Eight => codes.view(self.shape.as_slice()),
            Bits::Four => {
                let pairs = codes.view([-1, 2]);
                pairs.select(1, 0) * 16 + pairs.select(1, 1)
            }
        };
        self.codes.copy_(&codes.to_kind(Kind::Uint8));
        self.scale.copy_(&scale);
    }
}

/// `start.lerp(end, weight)` as torch decomposes it for Inductor, with the weight a Python float
/// that the kernel rounds to fp32: `start + w·(end - start)` for |w| < 0.5, else
/// `end + (w - 1)·(end - start)`.
fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Tensor {
    let diff = end - start;
    if weight.abs() < 0.5 { diff * weight + start } else { diff * (weight - 1.0) + end }
}

/// torchao's `single_param_adam` with `IS_ADAMW`, no amsgrad and no stochastic rounding: updates
/// `param` in place and stores both moments.
pub fn step(param: &Tensor, grad: &Tensor, exp_avg: &mut Moment, exp_avg_sq: &mut Moment, h: &Hyper) {
    let _guard = tch::no_grad_guard();
    // torchao keeps lr and the step count as fp32 tensors: the scalars below are fp32 values
    // (a kernel rounds an f64 scalar to fp32, exactly for these), the corrections fp32 `powf`.
    let lr = h.lr as f32;
    let step = h.step as f32;
    let bias1 = 1.0f32 - (h.beta1 as f32).powf(step);
    let bias2_sqrt = (1.0f32 - (h.beta2 as f32).powf(step)).sqrt();
    let p = param.to_kind(Kind::Float);
    let g = grad.to_kind(Kind::Float);
    let p = &p - &p * f64::from(lr * h.weight_decay as f32);
    let m = lerp(&exp_avg.value(), &g, 1.0 - h.beta1);
    let v = lerp(&exp_avg_sq.value(), &g.square(), 1.0 - h.beta2);
    exp_avg.store(&m);
    exp_avg_sq.store(&v);
    // Inductor's sqrt is IEEE's; libtorch's fp32 one (MKL's) is not always correctly rounded, its
    // fp64 one rounded to fp32 is.
    let denom = v.to_kind(Kind::Double).sqrt().to_kind(Kind::Float) / f64::from(bias2_sqrt) + h.eps;
    let p = p - (m / f64::from(bias1)) * f64::from(lr) / denom;
    param.shallow_clone().copy_(&p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_codes_pack_high_nibble_first_and_round_trip() {
        // Values that are exactly map entries times a power-of-two scale come back unchanged.
        let map = qmap(Bits::Four, true);
        let idx = Tensor::arange(16, (Kind::Int64, Device::Cpu)).repeat([MIN_QUANTIZED / 16]);
        let values = map.index_select(0, &idx) * 0.5;
        let mut m = Moment::zeros(&values, Bits::Four, true);
        m.store(&values);
        let Moment::Quantized(q) = &m else { panic!("4,096 values get quantized moments") };
        assert_eq!(q.codes.size(), [MIN_QUANTIZED / 2]);
        assert_eq!(q.codes.int64_value(&[0]), 0x01);
        assert_eq!(q.codes.int64_value(&[1]), 0x23);
        assert!(m.value().equal(&values));
    }

    #[test]
    fn small_or_unaligned_tensors_keep_full_moments_in_their_dtype() {
        let small = Tensor::zeros([4095], (Kind::BFloat16, Device::Cpu));
        let unaligned = Tensor::zeros([4100], (Kind::Float, Device::Cpu));
        for (t, kind) in [(&small, Kind::BFloat16), (&unaligned, Kind::Float)] {
            match Moment::zeros(t, Bits::Eight, true) {
                Moment::Full(m) => assert_eq!(m.kind(), kind),
                Moment::Quantized(_) => panic!("{:?} must keep full moments", t.size()),
            }
        }
    }
}
