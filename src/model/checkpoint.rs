//! Safetensors I/O: checkpoints with the reference `state_dict` names (our config in the
//! metadata), and the small tensor files the `forward`/`grad` commands read and write.
//! Every error names the file and, where there is one, the tensor.

use super::params::{HostParams, tensor_specs};
use crate::config::ModelConfig;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// A host tensor of one of the element types the project exchanges.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl TensorData {
    fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::I32(_) => Dtype::I32,
            TensorData::U8(_) => Dtype::U8,
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            TensorData::F32(v) => bytemuck::cast_slice(v),
            TensorData::I32(v) => bytemuck::cast_slice(v),
            TensorData::U8(v) => v,
        }
    }
    fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
        }
    }
}

/// One named tensor to write.
#[derive(Clone, Debug)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl NamedTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { name: name.into(), shape, data: TensorData::F32(data) }
    }
    pub fn i32(name: impl Into<String>, shape: Vec<usize>, data: Vec<i32>) -> Self {
        Self { name: name.into(), shape, data: TensorData::I32(data) }
    }
    pub fn u8(name: impl Into<String>, shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self { name: name.into(), shape, data: TensorData::U8(data) }
    }
}

pub use crate::fsutil::write_atomic;

/// One tensor to write, borrowing its data (a checkpoint's gigabyte-sized puzzle table is
/// written where it lies, not copied).
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub dtype: Dtype,
    pub bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub fn f32(name: &'a str, shape: &'a [usize], data: &'a [f32]) -> Self {
        TensorRef { name, shape, dtype: Dtype::F32, bytes: bytemuck::cast_slice(data) }
    }
}

/// Serialize tensors with optional string metadata, atomically (see [`write_tensor_refs`]).
pub fn write_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut refs = Vec::with_capacity(tensors.len());
    for t in tensors {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            bail!(
                "tensor {}: shape {:?} holds {} elements but {} were given",
                t.name,
                t.shape,
                numel,
                t.data.len()
            );
        }
        refs.push(TensorRef { name: &t.name, shape: &t.shape, dtype: t.data.dtype(), bytes: t.data.bytes() });
    }
    write_tensor_refs(path, &refs, metadata.as_ref())
}

/// Serialize tensors with optional string metadata, atomically, streaming each tensor's bytes
/// to the file: no serialized copy of the whole file is made. The layout is the safetensors
/// crate's (`safetensors::serialize`): tensors ordered by descending dtype, then name, the
/// JSON header padded with spaces to a multiple of 8 bytes.
pub fn write_tensor_refs(
    path: &Path,
    tensors: &[TensorRef<'_>],
    metadata: Option<&HashMap<String, String>>,
) -> Result<()> {
    let mut order: Vec<&TensorRef<'_>> = tensors.iter().collect();
    order.sort_by(|l, r| r.dtype.cmp(&l.dtype).then(l.name.cmp(r.name)));
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::to_value(m)?);
    }
    let mut offset = 0usize;
    for t in &order {
        let numel: usize = t.shape.iter().product();
        if numel * t.dtype.size() != t.bytes.len() {
            bail!(
                "tensor {}: shape {:?} and dtype {:?} need {} bytes, {} given",
                t.name,
                t.shape,
                t.dtype,
                numel * t.dtype.size(),
                t.bytes.len()
            );
        }
        if header.contains_key(t.name) {
            bail!("tensor {}: named twice", t.name);
        }
        let end = offset + t.bytes.len();
        header.insert(
            t.name.to_string(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    crate::fsutil::write_atomic_with(path, |w| {
        use std::io::Write;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        for t in &order {
            w.write_all(t.bytes)?;
        }
        Ok(())
    })
}

/// A safetensors file read into memory, with typed accessors that name file and tensor on error.
pub struct TensorFile {
    path: String,
    bytes: Vec<u8>,
    names: Vec<String>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = crate::fsutil::read_regular(path, "a safetensors file")?;
        let shown = path.display().to_string();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{shown}: not a valid safetensors file (truncated or corrupt?): {e:?}"))?;
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{shown}: {e:?}"))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(TensorFile { path: shown, bytes, names, metadata })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("validated at open");
        st.tensor(name).map_err(|_| anyhow!("{}: tensor '{name}' is missing", self.path))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    /// A float tensor (f32, f64, bf16 or f16 on disk) as f32, checked against `shape` if given.
    pub fn f32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>> {
        let v = self.view(name)?;
        self.check_shape(name, v.shape(), shape)?;
        let b = v.data();
        Ok(match v.dtype() {
            Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
            }
            Dtype::BF16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::F16 => {
                b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => {
                bail!("{}: tensor '{name}' has dtype {other:?}; expected F32, BF16, F16 or F64", self.path)
            }
        })
    }

    /// An integer tensor (i32, i64, u8 or bool on disk) as i32.
    pub fn i32(&self, name: &str, shape: Option<&[usize]>) -> Result<Vec<i32>> {
        let v = self.view(name)?;
        self.check_shape(name, v.shape(), shape)?;
        let b = v.data();
        Ok(match v.dtype() {
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| {
                    let x = i64::from_le_bytes(c.try_into().unwrap());
                    i32::try_from(x)
                        .map_err(|_| anyhow!("{}: tensor '{name}' value {x} overflows i32", self.path))
                })
                .collect::<Result<_>>()?,
            Dtype::U8 | Dtype::BOOL => b.iter().map(|&x| x as i32).collect(),
            other => {
                bail!("{}: tensor '{name}' has dtype {other:?}; expected I32, I64, U8 or BOOL", self.path)
            }
        })
    }

    fn check_shape(&self, name: &str, got: &[usize], want: Option<&[usize]>) -> Result<()> {
        if let Some(want) = want
            && got != want
        {
            bail!("{}: tensor '{name}' has shape {got:?}; expected {want:?}", self.path);
        }
        Ok(())
    }
}

/// Metadata key holding our `ModelConfig` as JSON.
pub const CONFIG_KEY: &str = "config";
const COMPILE_PREFIX: &str = "_orig_mod.";

/// Save a checkpoint: every state-dict tensor as f32 under its reference name, the config in
/// the metadata. Written atomically.
pub fn save_checkpoint(path: &Path, cfg: &ModelConfig, params: &HostParams) -> Result<()> {
    let specs = tensor_specs(cfg);
    let tensors = params.tensors();
    if tensors.len() != specs.len() {
        bail!("{}: {} tensors for a model of {}", path.display(), tensors.len(), specs.len());
    }
    let refs: Vec<TensorRef<'_>> =
        specs.iter().zip(tensors).map(|(s, t)| TensorRef::f32(&s.name, &s.shape, t)).collect();
    let meta = HashMap::from([(CONFIG_KEY.to_string(), serde_json::to_string(cfg)?)]);
    write_tensor_refs(path, &refs, Some(&meta))
}

/// Load a checkpoint. The config comes from `config` if given, else from the file's metadata.
/// Names may carry torch.compile's `_orig_mod.` prefix. Every expected tensor must be present
/// with its exact shape, and no other tensor may be.
pub fn load_checkpoint(path: &Path, config: Option<&ModelConfig>) -> Result<(ModelConfig, HostParams)> {
    let file = TensorFile::open(path)?;
    let cfg = match config {
        Some(c) => c.clone(),
        None => {
            let json = file.metadata().get(CONFIG_KEY).ok_or_else(|| {
                anyhow!(
                    "{}: no model config in the safetensors metadata; pass one with --config",
                    file.path()
                )
            })?;
            ModelConfig::from_json_str(json)
                .with_context(|| format!("{}: config in metadata", file.path()))?
        }
    };
    cfg.validate().with_context(|| format!("{}: model config", file.path()))?;
    super::memory::check_file_size(file.path(), &cfg, file.byte_len())?;
    let strip = |n: &str| n.strip_prefix(COMPILE_PREFIX).unwrap_or(n).to_string();
    let mut present: HashMap<String, String> = HashMap::new();
    for n in file.names() {
        if let Some(other) = present.insert(strip(n), n.clone()) {
            bail!(
                "{}: both '{other}' and '{n}' are present (the same tensor with and without the \
                 torch.compile prefix '{COMPILE_PREFIX}'); keep one",
                file.path()
            );
        }
    }
    let specs = tensor_specs(&cfg);
    for name in present.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            bail!(
                "{}: unexpected tensor '{name}' (not part of the model for this config: hidden_size {}, H_layers {}, L_layers {}, puzzle_emb_ndim {}, pos_encodings {:?})",
                file.path(),
                cfg.hidden_size,
                cfg.H_layers,
                cfg.L_layers,
                cfg.puzzle_emb_ndim,
                cfg.pos_encodings
            );
        }
    }
    let mut tensors = Vec::with_capacity(specs.len());
    for s in &specs {
        let stored =
            present.get(&s.name).ok_or_else(|| anyhow!("{}: tensor '{}' is missing", file.path(), s.name))?;
        let data = file.f32(stored, Some(&s.shape))?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor '{}' holds a non-finite value at flat index {i}", file.path(), s.name);
        }
        tensors.push(data);
    }
    let mut it = tensors.into_iter();
    let params = HostParams::from_specs(&cfg, |_| it.next().expect("one tensor per spec"));
    Ok((cfg, params))
}
