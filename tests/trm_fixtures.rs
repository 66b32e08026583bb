//! The TRM fixtures written by the PyTorch reference (tools/reference/trm_reference.py) against
//! the config and parameter layout: the config keys parse to the same config the checkpoint
//! carries, every reference tensor loads under its official name with the shape our layout
//! gives it (and none is missing or extra), and the trainable-parameter count is the sum of the
//! reference's gradient tensors. The model itself is not implemented yet, so a TRM config from
//! outside is still refused with that said.

mod common;
use common::fixture_dir;
use hrm::config::ModelConfig;
use hrm::model::checkpoint::{TensorFile, load_checkpoint};
use hrm::model::params::{TensorKind, tensor_specs};

fn check(name: &str, mlp_t: bool) {
    let dir = fixture_dir(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = ModelConfig::parse_json(&text).unwrap();
    assert!(cfg.is_trm() && cfg.uses_mlp_t() == mlp_t, "{cfg:?}");
    let weights = TensorFile::open(&dir.join("weights.safetensors")).unwrap();
    let meta = ModelConfig::parse_json(weights.metadata().get("config").unwrap()).unwrap();
    assert_eq!(meta, cfg, "config.json and the checkpoint metadata agree");
    let e = ModelConfig::from_json_str(&text).unwrap_err().to_string();
    assert!(e.contains("arch trm") && e.contains("not implemented"), "{e}");

    let (_, params) = load_checkpoint(&dir.join("weights.safetensors"), Some(&cfg)).unwrap();
    let specs = tensor_specs(&cfg);
    assert_eq!(weights.names().len(), specs.len(), "one reference tensor per spec");
    assert!(params.h_layers.is_empty() && params.l_layers.len() == cfg.L_layers);
    let mixer = if mlp_t { "mlp_t.gate_up_proj" } else { "self_attn.qkv_proj" };
    assert!(specs.iter().any(|s| s.name == format!("model.inner.L_level.layers.1.{mixer}.weight")));

    // Gradients exist for the trainable tensors and the puzzle embedding, nothing else.
    let grad = TensorFile::open(&dir.join("grad.safetensors")).unwrap();
    let mut trainable = 0;
    for s in &specs {
        let has = grad.names().contains(&s.name);
        assert_eq!(has, s.kind != TensorKind::Buffer, "{}", s.name);
        if s.kind == TensorKind::Trainable {
            trainable += grad.f32(&s.name, Some(&s.shape)).unwrap().len();
        }
    }
    assert_eq!(trainable, cfg.num_trainable_params());
    assert_eq!(trainable, params.num_trainable(&cfg));
}

#[test]
fn trm_mlp_fixture_matches_the_config_and_parameter_layout() {
    check("trm_mlp", true);
}

#[test]
fn trm_attention_fixture_matches_the_config_and_parameter_layout() {
    check("trm_att", false);
}
