//! Checkpoint I/O: bit-exact round trip, reference names, dtype conversion, and errors that
//! name the file and tensor for every kind of bad input.

use hrm::config::ModelConfig;
use hrm::model::checkpoint::{NamedTensor, TensorData, load_checkpoint, save_checkpoint, write_tensors};
use hrm::model::{HostParams, tensor_specs};
use std::collections::HashMap;
use std::path::Path;

fn tiny() -> (ModelConfig, HostParams) {
    let cfg = ModelConfig::tiny();
    let p = HostParams::init(&cfg, &mut hrm::rng::seeded(5));
    (cfg, p)
}

fn named(cfg: &ModelConfig, p: &HostParams) -> Vec<NamedTensor> {
    tensor_specs(cfg)
        .into_iter()
        .zip(p.tensors())
        .map(|(s, t)| NamedTensor::f32(s.name, s.shape, t.clone()))
        .collect()
}

fn err_of(path: &Path, cfg: Option<&ModelConfig>) -> String {
    format!("{:#}", load_checkpoint(path, cfg).expect_err("loading should fail"))
}

#[test]
fn round_trip_is_bit_exact_and_carries_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, p) = tiny();
    let path = dir.path().join("ck.safetensors");
    save_checkpoint(&path, &cfg, &p).unwrap();
    let (cfg2, p2) = load_checkpoint(&path, None).unwrap();
    assert_eq!(cfg2, cfg);
    for (a, b) in p.tensors().iter().zip(p2.tensors()) {
        assert_eq!(
            a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn init_follows_the_reference_recipe() {
    let cfg = ModelConfig::sudoku();
    let p = HostParams::init(&cfg, &mut hrm::rng::seeded(0));
    assert_eq!(p.num_trainable(&cfg), 27_275_266);
    assert!(p.q_head_weight.iter().all(|&v| v == 0.0));
    assert_eq!(p.q_head_bias, vec![-5.0, -5.0]);
    assert!(p.puzzle_emb.as_ref().unwrap().iter().all(|&v| v == 0.0));
    let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    // LeCun std 1/sqrt(fan_in): 1/sqrt(512) for qkv, 1/sqrt(1536) for down_proj; 1 for H_init.
    let qkv = std(&p.h_layers[0].qkv);
    assert!((qkv * 512f64.sqrt() - 1.0).abs() < 0.01, "{qkv}");
    let down = std(&p.l_layers[3].down);
    assert!((down * 1536f64.sqrt() - 1.0).abs() < 0.01, "{down}");
    let emb = std(&p.embed_tokens);
    assert!((emb * 512f64.sqrt() - 1.0).abs() < 0.05, "{emb}");
    assert!(p.h_init.iter().all(|v| v.abs() <= 2.0 * 1.14));
    // Deterministic from the seed, different across seeds.
    assert_eq!(HostParams::init(&cfg, &mut hrm::rng::seeded(0)).h_init, p.h_init);
    assert_ne!(HostParams::init(&cfg, &mut hrm::rng::seeded(1)).h_init, p.h_init);
}

#[test]
fn names_match_the_reference_state_dict() {
    let names: Vec<String> = tensor_specs(&ModelConfig::sudoku()).into_iter().map(|s| s.name).collect();
    for want in [
        "model.inner.embed_tokens.embedding_weight",
        "model.inner.H_level.layers.0.self_attn.qkv_proj.weight",
        "model.inner.L_level.layers.3.mlp.gate_up_proj.weight",
        "model.inner.lm_head.weight",
        "model.inner.q_head.weight",
        "model.inner.q_head.bias",
        "model.inner.puzzle_emb.weights",
        "model.inner.H_init",
        "model.inner.L_init",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want}");
    }
    assert_eq!(names.len(), 4 + 1 + 8 * 4 + 2);
}

#[test]
fn loads_bf16_and_f16_tensors_and_compiled_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, p) = tiny();
    // Write by hand: bf16 for layers, f16 for the rest, all under torch.compile's prefix.
    let specs = tensor_specs(&cfg);
    let mut bytes_store: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (s, t) in specs.iter().zip(p.tensors()) {
        let (dt, b): (_, Vec<u8>) = if s.name.contains("layers") {
            (
                safetensors::Dtype::BF16,
                t.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            )
        } else {
            (safetensors::Dtype::F16, t.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect())
        };
        bytes_store.push((format!("_orig_mod.{}", s.name), dt, s.shape.clone(), b));
    }
    let views: Vec<_> = bytes_store
        .iter()
        .map(|(n, dt, sh, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, sh.clone(), b).unwrap()))
        .collect();
    let path = dir.path().join("half.safetensors");
    safetensors::serialize_to_file(views, &None, &path).unwrap();
    // No config in the metadata: it must be given.
    assert!(err_of(&path, None).contains("no model config"));
    let (_, loaded) = load_checkpoint(&path, Some(&cfg)).unwrap();
    let (a, b) = (&loaded.h_layers[0].qkv, &p.h_layers[0].qkv);
    assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= y.abs() * 2f32.powi(-8)));
    assert_ne!(a, b, "bf16 rounding should show");
}

#[test]
fn bad_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, p) = tiny();
    let meta = Some(HashMap::from([("config".to_string(), serde_json::to_string(&cfg).unwrap())]));
    let lm = "model.inner.lm_head.weight";

    // Missing tensor.
    let mut t = named(&cfg, &p);
    t.retain(|x| x.name != lm);
    let path = dir.path().join("missing.safetensors");
    write_tensors(&path, &t, meta.clone()).unwrap();
    let e = err_of(&path, None);
    assert!(e.contains("missing.safetensors") && e.contains(lm) && e.contains("missing"), "{e}");

    // Unexpected tensor.
    let mut t = named(&cfg, &p);
    t.push(NamedTensor::f32("model.inner.H_level.layers.9.mlp.down_proj.weight", vec![1], vec![0.0]));
    let path = dir.path().join("extra.safetensors");
    write_tensors(&path, &t, meta.clone()).unwrap();
    let e = err_of(&path, None);
    assert!(e.contains("unexpected tensor 'model.inner.H_level.layers.9"), "{e}");

    // Wrong shape.
    let mut t = named(&cfg, &p);
    let x = t.iter_mut().find(|x| x.name == lm).unwrap();
    x.shape = vec![x.shape[1], x.shape[0]];
    let path = dir.path().join("shape.safetensors");
    write_tensors(&path, &t, meta.clone()).unwrap();
    let e = err_of(&path, None);
    assert!(e.contains(lm) && e.contains("[64, 11]") && e.contains("expected [11, 64]"), "{e}");

    // Unsupported dtype.
    let mut t = named(&cfg, &p);
    let x = t.iter_mut().find(|x| x.name == lm).unwrap();
    x.data = TensorData::I32(vec![0; 11 * 64]);
    let path = dir.path().join("dtype.safetensors");
    write_tensors(&path, &t, meta.clone()).unwrap();
    let e = err_of(&path, None);
    assert!(e.contains(lm) && e.contains("I32"), "{e}");

    // Truncated file.
    let good = dir.path().join("good.safetensors");
    save_checkpoint(&good, &cfg, &p).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.path().join("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_of(&path, None);
    assert!(e.contains("truncated.safetensors") && e.contains("truncated or corrupt"), "{e}");

    // Garbage header.
    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
    assert!(err_of(&path, None).contains("garbage.safetensors"));

    // Config in metadata that does not match the tensors.
    let mut other = cfg.clone();
    other.hidden_size = 32;
    let e = err_of(&good, Some(&other));
    assert!(e.contains("good.safetensors"), "{e}");

    // Non-finite values.
    let mut t = named(&cfg, &p);
    if let TensorData::F32(v) = &mut t[0].data {
        v[3] = f32::NAN;
    }
    let path = dir.path().join("nan.safetensors");
    write_tensors(&path, &t, meta).unwrap();
    assert!(err_of(&path, None).contains("non-finite"));
}

/// The streaming writer (no serialized copy of the file in memory) writes what the safetensors
/// crate's own serializer writes: the same tensors, dtypes, shapes, bytes and metadata, read
/// back by the crate's parser; mixed dtypes and names out of order included.
#[test]
fn streamed_files_read_back_as_the_crates_own() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![
        NamedTensor::u8("zeta.flags", vec![3], vec![1, 0, 1]),
        NamedTensor::f32("b.weight", vec![2, 3], vec![1.5, -2.0, 0.25, f32::MIN_POSITIVE, 7.0, -0.0]),
        NamedTensor::i32("a.ids", vec![5], vec![-1, 0, 1, i32::MAX, i32::MIN]),
        NamedTensor::f32("scalar", vec![], vec![3.0]),
        NamedTensor::u8("empty", vec![0], vec![]),
    ];
    let meta = HashMap::from([("k".to_string(), "{\"v\": 1}".to_string())]);
    let path = dir.path().join("t.safetensors");
    write_tensors(&path, &tensors, Some(meta.clone())).unwrap();
    let ours = std::fs::read(&path).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let (dtype, bytes): (safetensors::Dtype, &[u8]) = match &t.data {
                TensorData::F32(v) => (safetensors::Dtype::F32, bytemuck::cast_slice(v)),
                TensorData::I32(v) => (safetensors::Dtype::I32, bytemuck::cast_slice(v)),
                TensorData::U8(v) => (safetensors::Dtype::U8, v),
            };
            (t.name.clone(), safetensors::tensor::TensorView::new(dtype, t.shape.clone(), bytes).unwrap())
        })
        .collect();
    let theirs = safetensors::serialize(views, &Some(meta.clone())).unwrap();
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&ours).unwrap(),
        safetensors::SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    let mut want = b.names();
    want.sort();
    assert_eq!(names, want);
    for n in names {
        let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
        assert_eq!((x.dtype(), x.shape(), x.data()), (y.dtype(), y.shape(), y.data()), "{n}");
    }
    let (_, m) = safetensors::SafeTensors::read_metadata(&ours).unwrap();
    assert_eq!(m.metadata().as_ref(), Some(&meta));
    assert_eq!(ours.len(), theirs.len(), "the same header padding and data layout");
    // A tensor whose shape does not match its data is refused, naming it.
    let bad = vec![NamedTensor::f32("w", vec![2, 2], vec![1.0; 3])];
    let e = format!("{:#}", write_tensors(&dir.path().join("bad.safetensors"), &bad, None).unwrap_err());
    assert!(e.contains("tensor w") && e.contains("[2, 2]"), "{e}");
}
