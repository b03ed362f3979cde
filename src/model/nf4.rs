//! NF4 / FP4 blockwise 4-bit quantization with optional double quantization, bit-exact with
//! bitsandbytes 0.50.2 on the CPU (QLoRA's storage format), written with tensor ops only so the
//! same code runs on CUDA.
//!
//! What bitsandbytes 0.50.2 runs on the CPU, and what is reproduced here (checked against its
//! output by `tests/nf4.rs`, goldens from `scripts/reference/nf4_goldens.py`):
//!
//! * **4-bit quantization** (`quantize_4bit`, the pure-torch "default" backend): the weight is
//!   flattened and read as fp32; per block of `blocksize` (64) values `absmax = max |x|`; full
//!   blocks are scaled by a *multiplication* with `reciprocal(max(absmax, 1e-38))`, the last
//!   partial block by a *division* by `max(absmax, 1e-38)` (two different roundings), then
//!   clamped to [-1, 1]. The code index is `bucketize(scaled, midpoints)` where the midpoints
//!   are `(c[i] + c[i+1]) / 2` in fp32 between the sorted code values: a value exactly on a
//!   midpoint goes to the lower code. FP4's code is not sorted, so the bucket is mapped back
//!   through the (stable) argsort; FP4 has two zero codes (0 and 8): exact zeros get code 0,
//!   small positive values code 8. An odd element count is padded with one 0.0 before packing.
//!   Two codes per byte, **high nibble first** (element 2k in bits 7..4, 2k+1 in bits 3..0);
//!   `packed` is uint8 `[(n + 1) / 2, 1]` as bitsandbytes shapes it. The stored absmax is the
//!   unclamped one for full blocks but the *clamped* one (1e-38 in fp32, a subnormal) for an
//!   all-zero partial last block.
//! * **Double quantization** (`compress_statistics=True`): `offset = mean(absmax)` (fp32 torch
//!   mean, always computed on the CPU here so that the result does not depend on the device),
//!   then `absmax - offset` is quantized by `quantize_blockwise` with blocksize 256 and the
//!   signed 8-bit dynamic map ([`dynamic_map`]). On the CPU that is libbitsandbytes_cpu's
//!   `quantize_cpu`, which does not search the code: per block `inv = 1 / absmax` (fp32
//!   division), `v = clamp(x * inv, -1, 1)`, `i = trunc(fma((v + 1) * 0.5, 65535, 0.5))` (the
//!   library is compiled with FMA contraction; emulated here exactly through float64), and the
//!   code index is `lut[i]` of a 65536-entry table that maps the grid value
//!   `(2i) / 65535 - 1` to the number of code midpoints below it. That is *not* always the
//!   nearest code (values within 1/65535 of a midpoint can go either way: 4 of the 257 nested
//!   values of the bf16_257x64 golden), so the table is reproduced, not a nearest search. A
//!   block whose absmax is 0 gets index 0 everywhere (code -0.99297, times 0).
//! * **Dequantization**: nested absmax = `code[q] * nested_absmax[block]` then `+ offset`
//!   (fp32, in that order), then `out = code4[nibble] * absmax[block]` in fp32, cast to the
//!   output dtype (round to nearest even). When the last dimension is even bitsandbytes uses its
//!   C table, whose FP4 code 8 is -0.0 (so the product is -0.0); when it is odd, the torch
//!   fallback with +0.0. [`dequantize`] follows the same rule, so even the sign of zero matches
//!   (on an AVX-512 machine bitsandbytes also takes the fallback for blocksize >= 2048, so there
//!   FP4 zeros of such blocks come out +0.0 where this gives -0.0: equal as numbers).
//!
//! On CUDA, bitsandbytes runs its own kernels (not compared here; its 8-bit path searches the
//! code instead of using the table above), so its CUDA bytes may differ in a few places from its
//! CPU bytes; this module always gives the CPU path's bytes, on any device (every op is exact
//! or correctly rounded; the code tables and the mean are computed on the CPU). The one step
//! that may differ between machines is that fp32 mean when the absmax vector is longer than
//! torch's parallel grain (32768 blocks, about 2M weights): torch may then split the sum across
//! threads, in bitsandbytes as here.

use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Which 4-bit code: NormalFloat4 (QLoRA's default) or bitsandbytes' FP4 (E2M1-like).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    /// bitsandbytes' name (`quant_type=`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }
}

/// The second level of double quantization: the 8-bit blockwise state of the centred absmax.
pub struct Nested {
    /// fp32 `[ceil(blocks / blocksize)]`, the absmax of each block of the centred absmax.
    pub absmax: Tensor,
    /// fp32 `[256]`, the signed dynamic map ([`dynamic_map`]).
    pub code: Tensor,
    /// The mean of the first-level absmax, subtracted before and added back after.
    pub offset: f32,
    /// 256, as bitsandbytes uses.
    pub blocksize: i64,
    /// Where this state's first absmax block sits in the first nested block (0 for a whole
    /// weight; a slice of a larger quantized tensor, [`Quantized4::slice`], may start inside one).
    pub first: i64,
}

/// A weight quantized to 4 bits, laid out as bitsandbytes' `Params4bit` + `QuantState`.
pub struct Quantized4 {
    /// uint8 `[(n + 1) / 2, 1]`, two codes per byte, high nibble = even element.
    pub packed: Tensor,
    /// fp32 `[blocks]`, or uint8 `[blocks]` (8-bit codes of `absmax - offset`) when `nested`.
    pub absmax: Tensor,
    pub nested: Option<Nested>,
    /// The original shape.
    pub shape: Vec<i64>,
    pub blocksize: i64,
    pub quant_type: QuantType,
    /// The original dtype (bitsandbytes dequantizes to it by default).
    pub dtype: Kind,
}

/// bitsandbytes' NF4 values (`get_4bit_type("nf4")`), sorted, as fp32. Written as bitsandbytes
/// writes them (float64 literals rounded to fp32; tests/nf4.rs checks the bits).
#[allow(clippy::excessive_precision)]
const NF4: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// bitsandbytes' FP4 values before normalisation (`get_4bit_type("fp4")` divides by the
/// largest magnitude, 12, in fp32). Index 8 is `-0` in the Python source, an *integer*, so +0.0.
const FP4_RAW: [f32; 16] =
    [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0];

/// The 16 code values of `quant_type` exactly as bitsandbytes' `get_4bit_type` (fp32).
pub fn code_values(quant_type: QuantType) -> [f32; 16] {
    match quant_type {
        QuantType::Nf4 => NF4,
        QuantType::Fp4 => FP4_RAW.map(|x| x / 12.0),
    }
}

/// The 16 code values as an fp32 CPU tensor (bitsandbytes' `QuantState.code`).
pub fn code(quant_type: QuantType) -> Tensor {
    Tensor::from_slice(&code_values(quant_type))
}

/// The table dequantization reads: the code, except that bitsandbytes' C kernel (taken when the
/// last dimension is even) has -0.0 at FP4 code 8.
fn dequant_values(quant_type: QuantType, last_dim_even: bool) -> [f32; 16] {
    let mut v = code_values(quant_type);
    if quant_type == QuantType::Fp4 && last_dim_even {
        v[8] = -0.0;
    }
    v
}

/// `(bounds, order)`: the 15 fp32 midpoints between the sorted code values, and the code index
/// of each sorted position (torch's argsort of these 16 values, which is the stable order).
fn bounds_and_order(quant_type: QuantType) -> (Vec<f32>, Vec<i64>) {
    let code = code_values(quant_type);
    let mut order: Vec<i64> = (0..16).collect();
    order.sort_by(|&a, &b| code[a as usize].partial_cmp(&code[b as usize]).unwrap());
    let sorted: Vec<f32> = order.iter().map(|&i| code[i as usize]).collect();
    let bounds = sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    (bounds, order)
}

/// bitsandbytes' `create_dynamic_map()` (signed, 7 exponent bits, 8 bits): the 256-value fp32
/// code of the nested absmax and of 8-bit AdamW's first moment, as a CPU tensor. Built once with
/// the same torch ops as bitsandbytes (fp32 linspace, means, scalar products) on the CPU, then cached.
pub fn dynamic_map() -> Tensor {
    Tensor::from_slice(dynamic_map_values(true))
}

/// bitsandbytes' `create_dynamic_map(signed=False)`: the code of 8-bit AdamW's second moment
/// (never negative, so all 256 values cover [0, 1]).
pub fn unsigned_dynamic_map() -> Tensor {
    Tensor::from_slice(dynamic_map_values(false))
}

fn dynamic_map_values(signed: bool) -> &'static [f32] {
    static SIGNED: OnceLock<Vec<f32>> = OnceLock::new();
    static UNSIGNED: OnceLock<Vec<f32>> = OnceLock::new();
    let build = || {
        // 10 ** (-(max_exponent_bits - 1) + i) for i in 0..7, as Python evaluates it.
        const SCALES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for (i, scale) in SCALES.iter().enumerate() {
            // The sign bit is a further fraction bit when unsigned.
            let items = (1i64 << (i + usize::from(!signed))) + 1;
            let b = Tensor::linspace(0.1, 1.0, items, (Kind::Float, Device::Cpu));
            let means = (b.narrow(0, 0, items - 1) + b.narrow(0, 1, items - 1)) / 2.0;
            data.extend(Vec::<f32>::try_from(&means * *scale).unwrap());
            if signed {
                data.extend(Vec::<f32>::try_from(&means * -*scale).unwrap());
            }
        }
        data.push(0.0);
        data.push(1.0);
        assert_eq!(data.len(), 256);
        data.sort_by(|a, b| a.partial_cmp(b).unwrap());
        data
    };
    if signed { SIGNED.get_or_init(build) } else { UNSIGNED.get_or_init(build) }
}

/// The 65536-entry table of libbitsandbytes_cpu's `quantize_cpu` (int64, CPU): for grid value
/// `g_i = (i + i) / 65535 - 1`, the number of code midpoints `(c[j] + c[j+1]) * 0.5` below it.
/// The tables of the two dynamic maps are built once and cached.
fn quantize_lut(code: &Tensor) -> Tensor {
    let build = |code: &Tensor| {
        let n = code.size()[0];
        let mid = (code.narrow(0, 0, n - 1) + code.narrow(0, 1, n - 1)) * 0.5;
        let i = Tensor::arange(65536, (Kind::Float, Device::Cpu));
        let grid = (&i + &i) / 65535.0 - 1.0;
        grid.bucketize(&mid, false, false)
    };
    let code = code.to_device(Device::Cpu).to_kind(Kind::Float);
    let values = Vec::<f32>::try_from(&code).unwrap();
    let same =
        |map: &[f32]| values.len() == map.len() && values.iter().zip(map).all(|(a, b)| a.to_bits() == b.to_bits());
    static SIGNED: OnceLock<Vec<i64>> = OnceLock::new();
    static UNSIGNED: OnceLock<Vec<i64>> = OnceLock::new();
    if same(dynamic_map_values(true)) {
        Tensor::from_slice(SIGNED.get_or_init(|| Vec::<i64>::try_from(build(&code)).unwrap()))
    } else if same(dynamic_map_values(false)) {
        Tensor::from_slice(UNSIGNED.get_or_init(|| Vec::<i64>::try_from(build(&code)).unwrap()))
    } else {
        build(&code)
    }
}

/// A blockwise code with its quantization table, both resident on one device: built once, so
/// quantizing with it (8-bit AdamW, every step) reads nothing back from the device.
pub struct BlockCode {
    /// fp32 `[256]`.
    pub values: Tensor,
    lut: Tensor,
}

impl BlockCode {
    pub fn new(code: &Tensor, device: Device) -> BlockCode {
        BlockCode { values: code.to_kind(Kind::Float).to_device(device), lut: quantize_lut(code).to_device(device) }
    }

    pub fn shallow_clone(&self) -> BlockCode {
        BlockCode { values: self.values.shallow_clone(), lut: self.lut.shallow_clone() }
    }
}

/// bitsandbytes' `quantize_blockwise(x, code, blocksize)` as libbitsandbytes_cpu 0.50.2 computes
/// it: `(uint8 codes shaped like x, fp32 absmax [ceil(n / blocksize)])`.
pub fn quantize_blockwise(x: &Tensor, code: &Tensor, blocksize: i64) -> (Tensor, Tensor) {
    quantize_blockwise_with(x, &BlockCode::new(code, x.device()), blocksize)
}

/// [`quantize_blockwise`] with a prepared code on `x`'s device: device operations only.
pub fn quantize_blockwise_with(x: &Tensor, code: &BlockCode, blocksize: i64) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let flat = x.reshape([-1]).to_kind(Kind::Float);
        let n = flat.size()[0];
        let blocks = (n + blocksize - 1) / blocksize;
        let xp = flat.constant_pad_nd([0, blocks * blocksize - n]).view([blocks, blocksize]);
        let absmax = xp.abs().amax([1], false);
        let zero = absmax.eq(0.0);
        let inv = absmax.masked_fill(&zero, 1.0).reciprocal();
        let v = (&xp * inv.unsqueeze(1)).clamp(-1.0, 1.0);
        let t = (v + 1.0) * 0.5;
        // fma(t, 65535, 0.5) rounded once to fp32: exact in float64 for every t that can reach 1.
        let y = (t.to_kind(Kind::Double) * 65535.0 + 0.5).to_kind(Kind::Float);
        // NaN (0 * inf when 1 / absmax overflows) truncates to index 0 in the C code.
        let idx = y.masked_fill(&y.isnan(), 0.0).to_kind(Kind::Int64);
        let q = code.lut.index_select(0, &idx.view([-1])).view([blocks, blocksize]).masked_fill(&zero.unsqueeze(1), 0);
        let q = q.view([-1]).narrow(0, 0, n).to_kind(Kind::Uint8).view(x.size().as_slice());
        (q, absmax)
    })
}

/// bitsandbytes' `dequantize_blockwise`: `code[q] * absmax[block]` in fp32, flat `[n]`.
pub fn dequantize_blockwise(q: &Tensor, absmax: &Tensor, code: &Tensor, blocksize: i64) -> Tensor {
    tch::no_grad(|| {
        let device = q.device();
        let flat = q.reshape([-1]).to_kind(Kind::Int64);
        let n = flat.size()[0];
        let blocks = (n + blocksize - 1) / blocksize;
        let vals = code.to_device(device).to_kind(Kind::Float).index_select(0, &flat);
        let out = vals.constant_pad_nd([0, blocks * blocksize - n]).view([blocks, blocksize])
            * absmax.to_kind(Kind::Float).view([blocks, 1]);
        out.view([-1]).narrow(0, 0, n)
    })
}

/// Quantize `w` (fp32, bf16 or fp16, any shape) to 4 bits per value in blocks of `blocksize`
/// (32 ... 4096, a power of two; QLoRA uses 64), as bitsandbytes'
/// `quantize_4bit(w, blocksize, quant_type, compress_statistics=double_quant)`. The result lives
/// on `w`'s device. Panics on an unsupported blocksize or dtype, or an empty tensor.
pub fn quantize(w: &Tensor, blocksize: i64, quant_type: QuantType, double_quant: bool) -> Quantized4 {
    assert!(
        [32, 64, 128, 256, 512, 1024, 2048, 4096].contains(&blocksize),
        "4-bit quantization: invalid blocksize {blocksize} (32, 64, ..., 4096)"
    );
    let dtype = w.kind();
    assert!(
        matches!(dtype, Kind::Float | Kind::BFloat16 | Kind::Half),
        "4-bit quantization takes fp32, bf16 or fp16 weights, not {dtype:?}"
    );
    tch::no_grad(|| {
        let device = w.device();
        let flat = w.reshape([-1]).to_kind(Kind::Float);
        let n = flat.size()[0];
        assert!(n > 0, "4-bit quantization of an empty tensor");
        let rem = n % blocksize;
        let full = n - rem;
        let mut absmax = Vec::new();
        let mut scaled = Vec::new();
        if full > 0 {
            let a = flat.narrow(0, 0, full).view([full / blocksize, blocksize]);
            let am = a.abs().amax([1], false);
            let inv = am.clamp_min(1e-38).reciprocal();
            scaled.push((a * inv.unsqueeze(1)).clamp(-1.0, 1.0).view([-1]));
            absmax.push(am);
        }
        if rem > 0 {
            let r = flat.narrow(0, full, rem);
            let am = r.abs().max().clamp_min(1e-38);
            scaled.push((&r / &am).clamp(-1.0, 1.0));
            absmax.push(am.view([1]));
        }
        let mut scaled = Tensor::cat(&scaled, 0);
        if n % 2 == 1 {
            scaled = scaled.constant_pad_nd([0, 1]);
        }
        let absmax = Tensor::cat(&absmax, 0);

        let (bounds, order) = bounds_and_order(quant_type);
        let mut q = scaled.bucketize(&Tensor::from_slice(&bounds).to_device(device), true, false);
        if quant_type != QuantType::Nf4 {
            q = Tensor::from_slice(&order).to_device(device).index_select(0, &q);
        }
        let pairs = q.view([-1, 2]);
        let packed = (pairs.select(1, 0) * 16 + pairs.select(1, 1)).to_kind(Kind::Uint8).unsqueeze(1);

        let (absmax, nested) = if double_quant {
            let offset = absmax.to_device(Device::Cpu).mean(None::<Kind>);
            let centred = &absmax - offset.to_device(device);
            let code = dynamic_map();
            let (q, nested_absmax) = quantize_blockwise(&centred, &code, 256);
            let offset = offset.double_value(&[]) as f32;
            (q, Some(Nested { absmax: nested_absmax, code: code.to_device(device), offset, blocksize: 256, first: 0 }))
        } else {
            (absmax, None)
        };
        Quantized4 { packed, absmax, nested, shape: w.size(), blocksize, quant_type, dtype }
    })
}

/// Dequantize to `out_kind` (usually `q.dtype`), bit-exact with bitsandbytes'
/// `dequantize_4bit(packed, quant_state)` on the CPU. The result has the original shape and
/// lives on `q.packed`'s device.
pub fn dequantize(q: &Quantized4, out_kind: Kind) -> Tensor {
    tch::no_grad(|| {
        let device = q.packed.device();
        let n = q.numel();
        let absmax = q.absmax_f32();
        // One 256-entry table from byte to its (high, low) pair of values: a single gather.
        let last_dim_even = q.shape.last().is_none_or(|d| d % 2 == 0);
        let values = dequant_values(q.quant_type, last_dim_even);
        let pairs: Vec<f32> = (0..256usize).flat_map(|b| [values[b >> 4], values[b & 15]]).collect();
        let table = Tensor::from_slice(&pairs).view([256, 2]).to_device(device);
        let idx = q.packed.reshape([-1]).to_kind(Kind::Int);
        let vals = table.index_select(0, &idx).view([-1]).narrow(0, 0, n);
        let blocks = absmax.size()[0];
        let out =
            vals.constant_pad_nd([0, blocks * q.blocksize - n]).view([blocks, q.blocksize]) * absmax.view([blocks, 1]);
        out.view([-1]).narrow(0, 0, n).view(q.shape.as_slice()).to_kind(out_kind)
    })
}

impl Quantized4 {
    /// Number of weights.
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// The first-level absmax in fp32 (recovered from the nested state when double-quantized:
    /// `code[q] * nested_absmax + offset`, as bitsandbytes computes it).
    pub fn absmax_f32(&self) -> Tensor {
        match &self.nested {
            None => self.absmax.shallow_clone(),
            Some(nested) => {
                // A slice starting inside a nested block: its codes are padded in front so each
                // lands in its own nested block, then the padding is cut off again.
                let q = if nested.first > 0 {
                    self.absmax.constant_pad_nd([nested.first, 0])
                } else {
                    self.absmax.shallow_clone()
                };
                let full = dequantize_blockwise(&q, &nested.absmax, &nested.code, nested.blocksize);
                full.narrow(0, nested.first, self.absmax.size()[0]) + nested.offset as f64
            }
        }
    }

    /// Bytes held by the quantized state: packed codes, absmax, and when nested its absmax,
    /// its 256-value code and the fp32 offset.
    pub fn storage_bytes(&self) -> i64 {
        let bytes = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let nested = self.nested.as_ref().map_or(0, |n| bytes(&n.absmax) + bytes(&n.code) + 4);
        bytes(&self.packed) + bytes(&self.absmax) + nested
    }

    /// Elements `start .. start + numel(shape)` of the flattened weight as a weight of their own,
    /// sharing this state's storage (views): the codes, their blocks' absmax, and with double
    /// quantization the nested blocks that cover them. Dequantizing the slice gives exactly the
    /// same values as dequantizing the whole and cutting it (every step is per element or per
    /// block). `start` and the slice's length must be multiples of the block size (the length
    /// even), so that the slice holds whole blocks; None otherwise.
    pub fn slice(&self, start: i64, shape: &[i64]) -> Option<Quantized4> {
        let n: i64 = shape.iter().product();
        let bs = self.blocksize;
        if n <= 0 || start % bs != 0 || n % bs != 0 || n % 2 != 0 || start + n > self.numel() {
            return None;
        }
        let (b0, nb) = (start / bs, n / bs);
        let nested = self.nested.as_ref().map(|nd| {
            let at = b0 + nd.first;
            let (n0, n1) = (at / nd.blocksize, (at + nb - 1) / nd.blocksize);
            Nested {
                absmax: nd.absmax.narrow(0, n0, n1 - n0 + 1),
                code: nd.code.shallow_clone(),
                offset: nd.offset,
                blocksize: nd.blocksize,
                first: at % nd.blocksize,
            }
        });
        Some(Quantized4 {
            packed: self.packed.narrow(0, start / 2, n / 2),
            absmax: self.absmax.narrow(0, b0, nb),
            nested,
            shape: shape.to_vec(),
            blocksize: bs,
            quant_type: self.quant_type,
            dtype: self.dtype,
        })
    }

    /// Move every tensor to `device`.
    pub fn to_device(&self, device: Device) -> Quantized4 {
        Quantized4 {
            packed: self.packed.to_device(device),
            absmax: self.absmax.to_device(device),
            nested: self.nested.as_ref().map(|n| Nested {
                absmax: n.absmax.to_device(device),
                code: n.code.to_device(device),
                offset: n.offset,
                blocksize: n.blocksize,
                first: n.first,
            }),
            shape: self.shape.clone(),
            blocksize: self.blocksize,
            quant_type: self.quant_type,
            dtype: self.dtype,
        }
    }
}
