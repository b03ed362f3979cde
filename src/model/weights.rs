//! Safetensors in and out: a Hugging Face checkpoint (one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`) opened by memory map and read tensor by tensor, and atomic
//! writes of named tensors (temporary file, then rename). Pickle checkpoints are refused: a
//! recipe never runs code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An opened checkpoint: every tensor name mapped to the file and byte range that hold it.
pub struct Checkpoint {
    /// Set for `Checkpoint::random`: no files; every tensor asked for is generated.
    random: bool,
    dir: PathBuf,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    tensors: BTreeMap<String, TensorEntry>,
    taken: std::cell::RefCell<BTreeSet<String>>,
}

struct TensorEntry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

impl Checkpoint {
    /// Opens the safetensors weights of a model folder.
    pub fn open(dir: &Path) -> Result<Checkpoint, String> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", index.display()))?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| format!("{}: no `weight_map` object", index.display()))?;
            let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            // Shard names are relative paths inside the model folder, never `..` or absolute.
            if let Some(bad) = names.iter().find(|n| {
                Path::new(n).components().any(|c| !matches!(c, std::path::Component::Normal(_))) || n.is_empty()
            }) {
                return Err(format!("{}: shard `{bad}` is not a file inside the model folder", index.display()));
            }
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(missing_weights_message(dir));
        };
        Self::open_files(dir, &files)
    }

    /// Opens explicit safetensors files (e.g. an adapter or a checkpoint).
    pub fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Checkpoint, String> {
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            // SAFETY: the file is opened read-only; a concurrent writer is outside our contract.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))?;
            let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
                .map_err(|e| format!("{}: not a safetensors file: {e}", path.display()))?;
            let base = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (start, end) = info.data_offsets;
                let shape = info.shape.iter().map(|&d| d as i64).collect();
                tensors.insert(
                    name,
                    TensorEntry { file: i, dtype: info.dtype, shape, start: base + start, end: base + end },
                );
            }
            files.push((path.clone(), mmap));
        }
        Ok(Checkpoint { random: false, dir: dir.to_path_buf(), files, tensors, taken: Default::default() })
    }

    /// Random initialisation instead of a file, for benchmarks and device checks of model shapes
    /// nobody downloads (a Llama-2-13B shape from its config.json alone): each tensor is made when
    /// loaded, on the target device, so a quantized base is generated and quantized one weight at
    /// a time. Norm weights are ones, biases zeros, the rest N(0, 0.02), from torch's seed.
    pub fn random(dir: &Path) -> Checkpoint {
        Checkpoint {
            random: true,
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            taken: Default::default(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// Reads one tensor, checking its shape, converted to `kind` on `device`.
    pub fn load(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor, String> {
        if self.random {
            let options = (Kind::Float, device);
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape, options)
            } else if name.ends_with(".bias") {
                Tensor::zeros(shape, options)
            } else {
                Tensor::randn(shape, options) * 0.02
            };
            return Ok(t.to_kind(kind));
        }
        let entry = self.tensors.get(name).ok_or_else(|| {
            format!("{}: tensor `{name}` (shape {shape:?}) is missing from the checkpoint", self.dir.display())
        })?;
        if entry.shape != shape {
            return Err(format!(
                "{}: tensor `{name}` has shape {:?} in the checkpoint, the model expects {shape:?}",
                self.dir.display(),
                entry.shape
            ));
        }
        self.taken.borrow_mut().insert(name.to_string());
        let (path, mmap) = &self.files[entry.file];
        let source_kind = kind_of(entry.dtype).ok_or_else(|| {
            format!("{}: tensor `{name}` has dtype {:?}, which recipe cannot read", path.display(), entry.dtype)
        })?;
        let bytes = &mmap[entry.start..entry.end];
        let tensor = Tensor::f_from_data_size(bytes, &entry.shape, source_kind)
            .map_err(|e| format!("{}: tensor `{name}`: {e}", path.display()))?;
        // The bytes were copied: release the mapped pages, so loading a model never holds it twice
        // (the copies plus the file's pages) in resident memory.
        // SAFETY: a read-only file mapping; pages dropped are read from the file again if touched.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, entry.start, entry.end - entry.start)
        };
        Ok(tensor.to_device(device).to_kind(kind))
    }

    /// Checkpoint tensors no `load` asked for (a sign of a wrong architecture).
    pub fn unused(&self) -> Vec<String> {
        let taken = self.taken.borrow();
        self.tensors.keys().filter(|k| !taken.contains(*k)).cloned().collect()
    }
}

fn missing_weights_message(dir: &Path) -> String {
    let pickles: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth") || n.ends_with(".ckpt"))
        .collect();
    if pickles.is_empty() {
        format!("{}: no model.safetensors or model.safetensors.index.json", dir.display())
    } else {
        format!(
            "{}: has only pickle weights ({}); recipe loads safetensors only, because unpickling runs code. \
             Convert once with transformers: `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, \
             safe_serialization=True)`",
            dir.display(),
            pickles.join(", ")
        )
    }
}

fn kind_of(dtype: safetensors::Dtype) -> Option<Kind> {
    use safetensors::Dtype as D;
    Some(match dtype {
        D::F32 => Kind::Float,
        D::F16 => Kind::Half,
        D::BF16 => Kind::BFloat16,
        D::F64 => Kind::Double,
        D::I64 => Kind::Int64,
        D::I32 => Kind::Int,
        D::I16 => Kind::Int16,
        D::I8 => Kind::Int8,
        D::U8 => Kind::Uint8,
        D::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Result<safetensors::Dtype, String> {
    use safetensors::Dtype as D;
    Ok(match kind {
        Kind::Float => D::F32,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Double => D::F64,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Int16 => D::I16,
        Kind::Int8 => D::I8,
        Kind::Uint8 => D::U8,
        Kind::Bool => D::BOOL,
        other => return Err(format!("cannot write tensors of kind {other:?}")),
    })
}

/// A tensor to write, made only when the writer reaches it, so writing a model holds one tensor
/// (plus what it is computed from) at a time: a merged weight, a dequantized one, a cast copy.
pub struct Deferred<'a> {
    pub name: String,
    pub shape: Vec<i64>,
    pub kind: Kind,
    make: Box<dyn Fn() -> Tensor + 'a>,
}

impl<'a> Deferred<'a> {
    /// `make` must return a tensor of `shape` and `kind` (checked when written).
    pub fn new(name: String, shape: Vec<i64>, kind: Kind, make: impl Fn() -> Tensor + 'a) -> Deferred<'a> {
        Deferred { name, shape, kind, make: Box::new(make) }
    }

    /// A tensor that already exists.
    pub fn ready(name: String, tensor: Tensor) -> Deferred<'a> {
        Deferred { name, shape: tensor.size(), kind: tensor.kind(), make: Box::new(move || tensor.shallow_clone()) }
    }

    /// The tensor, made now (what writing it would write).
    pub fn tensor(&self) -> Tensor {
        (self.make)()
    }

    /// Floating-point tensors converted to `kind` when written (integer ones as they are).
    pub fn cast(self, kind: Kind) -> Deferred<'a> {
        if !is_float(self.kind) || self.kind == kind {
            return self;
        }
        let make = self.make;
        Deferred { kind, make: Box::new(move || make().to_kind(kind)), ..self }
    }
}

fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Writes named tensors to `path` in the safetensors format with `{"format": "pt"}` metadata (what
/// transformers and peft expect). See [`save_deferred`].
pub fn save(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), String> {
    save_deferred(path, tensors.iter().map(|(n, t)| Deferred::ready(n.clone(), t.shallow_clone())).collect())
}

/// Writes tensors made one at a time: the header is computed from shapes and dtypes, then each
/// tensor is made, written and dropped in turn, so host memory grows by one tensor (not by every
/// tensor plus the serialized file). Through a temporary file renamed into place, so a crash or a
/// full disk never leaves a truncated file under the final name.
pub fn save_deferred(path: &Path, tensors: Vec<Deferred>) -> Result<(), String> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in &tensors {
        if header.contains_key(&t.name) {
            return Err(format!("{}: tensor `{}` given twice", path.display(), t.name));
        }
        let dtype = dtype_of(t.kind)?;
        let bytes = t.shape.iter().product::<i64>() as usize * t.kind.elt_size_in_bytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| e.to_string())?.into_bytes();
    // The data starts 8-byte aligned, as the reference writer pads it.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let tmp = temporary(path);
    let result = (|| -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: cannot write: {e}", path.display());
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(io)?);
        f.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        for d in &tensors {
            // Counted: on a GPU each tensor's copy waits for the device.
            let t = crate::exec::host_sync::to_host_for_writing(&(d.make)());
            if t.size() != d.shape || t.kind() != d.kind {
                return Err(format!(
                    "tensor `{}`: made as {:?} {:?}, announced as {:?} {:?}",
                    d.name,
                    t.kind(),
                    t.size(),
                    d.kind,
                    d.shape
                ));
            }
            let len = t.numel() * t.kind().elt_size_in_bytes();
            // SAFETY: `t` is a contiguous CPU tensor of `len` bytes, alive while the slice is read.
            let data = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) };
            f.write_all(data).map_err(io)?;
        }
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The safetensors dtype name transformers writes in config.json for `kind`.
pub fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// `NAME.EXT.tmp` beside `path`.
fn temporary(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ))
}

/// Writes bytes through `NAME.tmp` + fsync + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = temporary(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot write: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_shards_must_stay_inside_the_model_folder() {
        let dir = tempfile::tempdir().unwrap();
        for shard in ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"] {
            let index = serde_json::json!({"weight_map": {"model.embed_tokens.weight": shard}});
            std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
            let e = Checkpoint::open(dir.path()).err().expect("refused");
            assert!(e.contains(&format!("shard `{shard}` is not a file inside the model folder")), "{e}");
        }
    }

    #[test]
    fn saved_files_read_back_with_the_safetensors_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensors = vec![
            ("b.odd".to_string(), Tensor::from_slice(&[1u8, 2, 3])),
            ("a.weight".to_string(), Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3])),
            ("c.half".to_string(), Tensor::from_slice(&[0.5f32, -2.0]).to_kind(Kind::BFloat16)),
        ];
        save(&path, &tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let read = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(metadata.metadata().as_ref().unwrap()["format"], "pt");
        assert_eq!(read.tensor("b.odd").unwrap().data(), &[1, 2, 3]);
        assert_eq!(read.tensor("a.weight").unwrap().shape(), &[2, 3]);
        let a: Vec<f32> = read
            .tensor("a.weight")
            .unwrap()
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(a, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(read.tensor("c.half").unwrap().dtype(), safetensors::Dtype::BF16);
        let twice = [("x".to_string(), Tensor::from_slice(&[1u8])), ("x".to_string(), Tensor::from_slice(&[2u8]))];
        assert!(save(&path, &twice).unwrap_err().contains("given twice"));
    }
}
