//! Model configuration with the reference code's field names (`HierarchicalReasoningModel_ACTV1Config`,
//! and for TRM `TinyRecursiveReasoningModel_ACTV1Config`'s extra keys).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architecture of an HRM model. Field names (and JSON keys) are exactly the reference's.
#[allow(non_snake_case)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub expansion: f64,
    pub H_layers: usize,
    pub L_layers: usize,
    pub H_cycles: usize,
    pub L_cycles: usize,
    pub halt_max_steps: usize,
    pub halt_exploration_prob: f64,
    pub puzzle_emb_ndim: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    pub num_puzzle_identifiers: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub pos_encodings: PosEncodings,
    /// `hrm` (the default, left out of HRM configs) or `trm`. Our key: the reference tells the
    /// two apart by the model class it names.
    #[serde(default, skip_serializing_if = "Arch::is_hrm")]
    pub arch: Arch,
    /// TRM: the token-mixing SwiGLU across the sequence (normalized over the sequence) in
    /// place of attention. Absent: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_t: Option<bool>,
    /// TRM: prefix positions holding the puzzle embedding (0: ceil(puzzle_emb_ndim / hidden)
    /// as HRM). Absent: 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub puzzle_emb_len: Option<usize>,
    /// TRM: halt when q_halt > 0 and train no q_continue (true), or HRM's rule and target-Q
    /// loss (false). Absent: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_ACT_continue: Option<bool>,
}

/// The model of the family a config describes (also `--arch` of the commands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Two modules (H and L), one-step gradient.
    #[default]
    Hrm,
    /// One network for both updates, gradient through the whole last recursion.
    Trm,
}

impl Arch {
    pub fn is_hrm(&self) -> bool {
        *self == Arch::Hrm
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Hrm => "hrm",
            Arch::Trm => "trm",
        }
    }
    fn article_name(self) -> &'static str {
        match self {
            Arch::Hrm => "an HRM",
            Arch::Trm => "a TRM",
        }
    }
    /// This architecture's one of a command's two presets (`hrm train`: sudoku /
    /// trm-sudoku-mlp, TRM_SPEC section 4's Sudoku default; `hrm demo`: demo / trm-demo).
    pub fn pick<'a>(self, hrm: &'a str, trm: &'a str) -> &'a str {
        match self {
            Arch::Hrm => hrm,
            Arch::Trm => trm,
        }
    }
    /// `--arch` against the model a preset or config file (`source`) gave: they must agree.
    pub fn check(arch: Option<Arch>, cfg: &ModelConfig, source: &str) -> Result<()> {
        match arch {
            Some(a) if a != cfg.arch => bail!(
                "--arch {}: {source} describes {} model (drop --arch, or name {} preset or config)",
                a.name(),
                cfg.arch.article_name(),
                a.article_name()
            ),
            _ => Ok(()),
        }
    }
}

/// The benchmark a model is shaped for (`--task` of `hrm bench`): with the family it names a
/// preset (TASKS_SPEC section 4, TRM_SPEC section 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Sudoku-Extreme, 9 x 9 (S = 82 for HRM, 97 for TRM)
    #[default]
    Sudoku,
    /// Maze-Hard, 30 x 30 (S = 901 / 916)
    Maze,
    /// ARC-AGI-1, 30 x 30 canvases, 876,408 puzzle identifiers
    Arc1,
    /// ARC-AGI-2, 1,045,833 puzzle identifiers
    Arc2,
}

impl Task {
    /// The preset of this task for `arch`.
    pub fn preset(self, arch: Arch) -> &'static str {
        match self {
            Task::Sudoku => arch.pick("sudoku", "trm-sudoku-mlp"),
            Task::Maze => arch.pick("maze", "trm-maze"),
            Task::Arc1 => arch.pick("arc1", "trm-arc1"),
            Task::Arc2 => arch.pick("arc2", "trm-arc2"),
        }
    }
}

/// Position encoding: rotary (the Sudoku setting) or a learned table added to the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEncodings {
    Rope,
    Learned,
    /// No position information (TRM with `mlp_t`, whose token mixing is position-specific).
    None,
}

impl ModelConfig {
    /// The paper's Sudoku-Extreme model: 27,275,266 trainable parameters.
    pub fn sudoku() -> Self {
        ModelConfig {
            hidden_size: 512,
            num_heads: 8,
            expansion: 4.0,
            H_layers: 4,
            L_layers: 4,
            H_cycles: 2,
            L_cycles: 2,
            halt_max_steps: 16,
            halt_exploration_prob: 0.1,
            puzzle_emb_ndim: 512,
            vocab_size: 11,
            seq_len: 81,
            num_puzzle_identifiers: 1,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            pos_encodings: PosEncodings::Rope,
            arch: Arch::Hrm,
            mlp_t: None,
            puzzle_emb_len: None,
            no_ACT_continue: None,
        }
    }

    /// TRM's Sudoku-Attention model (`config/arch/trm.yaml` with the README command's
    /// overrides): one 2-block network, T = 3 recursions of n = 6 z-updates, 16 prefix
    /// positions, RoPE. 6,828,034 trainable parameters.
    pub fn trm_sudoku_att() -> Self {
        ModelConfig {
            L_layers: 2,
            H_cycles: 3,
            L_cycles: 6,
            arch: Arch::Trm,
            mlp_t: Some(false),
            puzzle_emb_len: Some(16),
            no_ACT_continue: Some(true),
            ..Self::sudoku()
        }
    }

    /// TRM's Sudoku-MLP model: the attention replaced by the token-mixing SwiGLU, no position
    /// encoding. 5,028,866 trainable parameters.
    pub fn trm_sudoku_mlp() -> Self {
        ModelConfig { mlp_t: Some(true), pos_encodings: PosEncodings::None, ..Self::trm_sudoku_att() }
    }

    /// A tiny model for tests and gradient checks (the shape of the PyTorch `tiny` fixture).
    pub fn tiny() -> Self {
        ModelConfig {
            hidden_size: 64,
            num_heads: 4,
            H_layers: 2,
            L_layers: 2,
            puzzle_emb_ndim: 64,
            num_puzzle_identifiers: 3,
            ..Self::sudoku()
        }
    }

    /// The `demo` preset: small enough to train on two CPU cores in minutes.
    pub fn demo() -> Self {
        ModelConfig {
            hidden_size: 64,
            num_heads: 4,
            H_layers: 1,
            L_layers: 1,
            puzzle_emb_ndim: 64,
            // Four segments: a carried puzzle is replaced 4x sooner, so a short CPU run sees
            // 4x more distinct puzzles.
            halt_max_steps: 4,
            ..Self::sudoku()
        }
    }

    /// A small model (hidden 128, two layers per module).
    pub fn small() -> Self {
        ModelConfig {
            hidden_size: 128,
            num_heads: 4,
            H_layers: 2,
            L_layers: 2,
            puzzle_emb_ndim: 128,
            ..Self::sudoku()
        }
    }

    /// TRM for the CPU demo: the `demo` width (hidden 64) with TRM's token-mixing SwiGLU and
    /// 2 blocks, T = 2 recursions of n = 2 z-updates (6 network calls per segment, the last 3
    /// with gradient), 4 segments, and a 1-token prefix (S = 82, token-MLP width 256; the
    /// reference's 16 tokens would add 15 zero positions to mix).
    pub fn trm_demo() -> Self {
        ModelConfig {
            hidden_size: 64,
            num_heads: 4,
            H_layers: 1,
            H_cycles: 2,
            L_cycles: 2,
            halt_max_steps: 4,
            puzzle_emb_ndim: 64,
            puzzle_emb_len: Some(1),
            ..Self::trm_sudoku_mlp()
        }
    }

    /// HRM on Maze-Hard (TASKS_SPEC section 4): the Sudoku model on 30 x 30 grids of `# SGo`
    /// (900 cells + 1 prefix position, 6 tokens with PAD), one puzzle identifier.
    pub fn maze() -> Self {
        ModelConfig { seq_len: 900, vocab_size: 6, ..Self::sudoku() }
    }

    /// HRM on ARC-AGI (TASKS_SPEC section 4): 30 x 30 canvases (12 tokens: PAD, EOS and 10
    /// colors) and one puzzle identifier per augmented task variant, `ids` with the blank (HRM's
    /// ARC-1 build: 876,408; ARC-2: 1,045,833; a built dataset states its own count).
    pub fn arc(ids: usize) -> Self {
        ModelConfig { seq_len: 900, vocab_size: 12, num_puzzle_identifiers: ids, ..Self::sudoku() }
    }

    /// TRM's Maze and ARC model (the README's commands): the attention variant with
    /// T = 3 recursions of n = 4 z-updates, 16 prefix positions (S = 916).
    fn trm_grid(task: Self) -> Self {
        ModelConfig {
            seq_len: task.seq_len,
            vocab_size: task.vocab_size,
            num_puzzle_identifiers: task.num_puzzle_identifiers,
            L_cycles: 4,
            ..Self::trm_sudoku_att()
        }
    }

    /// Puzzle identifiers (with the blank) of the reference builder's ARC-AGI-1 set.
    pub const ARC1_IDS: usize = 876_408;
    /// The same for ARC-AGI-2.
    pub const ARC2_IDS: usize = 1_045_833;

    /// The named presets, with what each is.
    pub const PRESETS: [(&'static str, &'static str); 13] = [
        ("sudoku", "HRM, Sudoku-Extreme (27.3M parameters)"),
        ("small", "HRM, hidden 128"),
        ("demo", "HRM for the CPU demo"),
        ("tiny", "HRM for tests"),
        ("maze", "HRM, Maze-Hard 30 x 30"),
        ("arc1", "HRM, ARC-AGI-1 (876,408 puzzle identifiers)"),
        ("arc2", "HRM, ARC-AGI-2 (1,045,833 puzzle identifiers)"),
        ("trm-sudoku-mlp", "TRM, Sudoku, token-mixing MLP"),
        ("trm-sudoku-att", "TRM, Sudoku, attention"),
        ("trm-demo", "TRM for the CPU demo"),
        ("trm-maze", "TRM, Maze-Hard 30 x 30"),
        ("trm-arc1", "TRM, ARC-AGI-1"),
        ("trm-arc2", "TRM, ARC-AGI-2 (HRM's ARC-2 identifier count; TRM adds ConceptARC)"),
    ];

    /// Look up a named preset.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "sudoku" | "full" => Ok(Self::sudoku()),
            "small" => Ok(Self::small()),
            "demo" => Ok(Self::demo()),
            "tiny" => Ok(Self::tiny()),
            "maze" => Ok(Self::maze()),
            "arc1" => Ok(Self::arc(Self::ARC1_IDS)),
            "arc2" => Ok(Self::arc(Self::ARC2_IDS)),
            "trm-sudoku-mlp" => Ok(Self::trm_sudoku_mlp()),
            "trm-sudoku-att" => Ok(Self::trm_sudoku_att()),
            "trm-demo" => Ok(Self::trm_demo()),
            "trm-maze" => Ok(Self::trm_grid(Self::maze())),
            "trm-arc1" => Ok(Self::trm_grid(Self::arc(Self::ARC1_IDS))),
            "trm-arc2" => Ok(Self::trm_grid(Self::arc(Self::ARC2_IDS))),
            _ => {
                let names: Vec<&str> = Self::PRESETS.iter().map(|p| p.0).collect();
                bail!("unknown model preset '{name}' (expected one of: {})", names.join(", "))
            }
        }
    }

    /// Read a JSON file holding exactly the reference's arch keys, and validate it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let bytes = crate::fsutil::read_regular(path, "a model config (JSON)")?;
        let text = String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text: {e}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("in model config {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: ModelConfig = serde_json::from_str(text).context("invalid model config JSON")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }

    /// Reject configurations the model cannot run, with the offending field named.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("H_layers", self.H_layers),
            ("L_layers", self.L_layers),
            ("H_cycles", self.H_cycles),
            ("L_cycles", self.L_cycles),
            ("halt_max_steps", self.halt_max_steps),
            ("vocab_size", self.vocab_size),
            ("seq_len", self.seq_len),
            ("num_puzzle_identifiers", self.num_puzzle_identifiers),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("config field {name} must be positive, got 0");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!("hidden_size ({}) must be divisible by num_heads ({})", self.hidden_size, self.num_heads);
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head_dim = hidden_size / num_heads = {} must be even for RoPE", self.head_dim());
        }
        if !(self.expansion.is_finite() && self.expansion > 0.0) {
            bail!("expansion must be a positive number, got {}", self.expansion);
        }
        if !(0.0..=1.0).contains(&self.halt_exploration_prob) {
            bail!("halt_exploration_prob must be in [0, 1], got {}", self.halt_exploration_prob);
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            bail!("rope_theta must be positive, got {}", self.rope_theta);
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            bail!("rms_norm_eps must be positive, got {}", self.rms_norm_eps);
        }
        // Bounds far above any published model of this family (HRM: 16 ACT steps, 2x2 cycles,
        // 4 layers; TRM: 3x6 cycles): a value past them is a typo that would run for days or
        // allocate without end, refused before any work.
        let bounded = [
            ("halt_max_steps", self.halt_max_steps, 1024),
            ("H_cycles", self.H_cycles, 64),
            ("L_cycles", self.L_cycles, 64),
            ("H_layers", self.H_layers, 256),
            ("L_layers", self.L_layers, 256),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("num_heads", self.num_heads, 1024),
            ("seq_len", self.seq_len, 1 << 16),
            ("puzzle_emb_ndim", self.puzzle_emb_ndim, 1 << 16),
            ("num_puzzle_identifiers", self.num_puzzle_identifiers, i32::MAX as usize),
        ];
        for (name, v, max) in bounded {
            if v > max {
                bail!("config field {name} is {v}; at most {max} is supported");
            }
        }
        if self.expansion > 64.0 {
            bail!("config field expansion is {}; at most 64 is supported", self.expansion);
        }
        match self.arch {
            Arch::Hrm => {
                let trm_keys = [
                    ("mlp_t", self.mlp_t.is_some()),
                    ("puzzle_emb_len", self.puzzle_emb_len.is_some()),
                    ("no_ACT_continue", self.no_ACT_continue.is_some()),
                ];
                if let Some((k, _)) = trm_keys.iter().find(|(_, present)| *present) {
                    bail!("config field {k} belongs to TRM; add \"arch\": \"trm\" or remove it");
                }
                if self.pos_encodings == PosEncodings::None {
                    bail!("pos_encodings none needs arch trm (HRM uses rope or learned)");
                }
            }
            Arch::Trm => {
                if let Some(n) = self.puzzle_emb_len
                    && n != 0
                    && n * self.hidden_size < self.puzzle_emb_ndim
                {
                    bail!(
                        "puzzle_emb_len {n} x hidden_size {} cannot hold puzzle_emb_ndim {}",
                        self.hidden_size,
                        self.puzzle_emb_ndim
                    );
                }
                if self.puzzle_emb_len.is_some_and(|n| n > 4096) {
                    bail!(
                        "config field puzzle_emb_len is {:?}; at most 4096 is supported",
                        self.puzzle_emb_len
                    );
                }
            }
        }
        if self.vocab_size > 256 {
            bail!("vocab_size {} > 256 is not supported (token ids are stored as bytes)", self.vocab_size);
        }
        Ok(())
    }

    /// The model reads Sudoku data: 81 cells, token ids 0..=10 (0 pad, 1 blank, 2..=10 the
    /// digits). Checked by every command that feeds it puzzles, before any work.
    pub fn check_sudoku(&self) -> Result<()> {
        if self.seq_len != 81 {
            bail!("config field seq_len is {}; Sudoku data has 81 cells per puzzle", self.seq_len);
        }
        if self.vocab_size != 11 {
            bail!(
                "config field vocab_size is {}; Sudoku data uses 11 token ids (0 pad, 1 blank, \
                 2..=10 the digits)",
                self.vocab_size
            );
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Number of prefix positions holding the puzzle embedding: ceil(puzzle_emb_ndim / hidden)
    /// for HRM (and TRM's `puzzle_emb_len: 0`), TRM's `puzzle_emb_len` otherwise (16 when
    /// absent). The positions past the embedding are zero.
    pub fn puzzle_emb_len(&self) -> usize {
        let fitted = self.puzzle_emb_ndim.div_ceil(self.hidden_size);
        match (self.arch, self.puzzle_emb_len) {
            (Arch::Hrm, _) | (Arch::Trm, Some(0)) => fitted,
            (Arch::Trm, Some(n)) => n,
            (Arch::Trm, None) => 16,
        }
    }

    pub fn is_trm(&self) -> bool {
        self.arch == Arch::Trm
    }

    /// TRM with the token-mixing SwiGLU in place of attention.
    pub fn uses_mlp_t(&self) -> bool {
        self.is_trm() && self.mlp_t == Some(true)
    }

    /// TRM's halting rule q_halt > 0 with no q_continue loss and no target-Q pass.
    pub fn no_act_continue(&self) -> bool {
        self.is_trm() && self.no_ACT_continue != Some(false)
    }

    /// Blocks of the network(s): H_layers + L_layers for HRM; TRM's one network has L_layers
    /// (its H_layers is ignored, as in the reference).
    pub fn num_blocks(&self) -> usize {
        if self.is_trm() { self.L_layers } else { self.H_layers + self.L_layers }
    }

    /// Width of the token-mixing SwiGLU (`mlp_t`): the channel rule applied to the sequence
    /// length, round(expansion * S * 2/3) rounded up to a multiple of 256 (S = 97: 512).
    pub fn token_intermediate_size(&self) -> usize {
        let inter = (self.expansion * self.total_seq_len() as f64 * 2.0 / 3.0).round() as usize;
        inter.div_ceil(256) * 256
    }

    /// Full sequence length seen by the transformer: prefix + cells.
    pub fn total_seq_len(&self) -> usize {
        self.seq_len + self.puzzle_emb_len()
    }

    /// SwiGLU intermediate width: round(expansion * hidden * 2/3) rounded up to a multiple of 256.
    pub fn intermediate_size(&self) -> usize {
        let inter = (self.expansion * self.hidden_size as f64 * 2.0 / 3.0).round() as usize;
        inter.div_ceil(256) * 256
    }

    pub fn embed_scale(&self) -> f32 {
        (self.hidden_size as f32).sqrt()
    }

    /// Number of trainable parameters (weights and the q_head bias; buffers excluded).
    pub fn num_trainable_params(&self) -> usize {
        let d = self.hidden_size;
        let i = self.intermediate_size();
        let mixer = if self.uses_mlp_t() {
            let (sq, it) = (self.total_seq_len(), self.token_intermediate_size());
            sq * 2 * it + it * sq
        } else {
            d * 3 * d + d * d
        };
        let per_layer = mixer + d * 2 * i + i * d;
        let pos = match self.pos_encodings {
            PosEncodings::Learned => self.total_seq_len() * d,
            PosEncodings::Rope | PosEncodings::None => 0,
        };
        per_layer * self.num_blocks() + 2 * self.vocab_size * d + 2 * d + 2 + pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TASKS_SPEC section 4's table: sequence (cells + prefix), vocabulary, puzzle identifiers
    /// and, for TRM, one 2-block attention network with T = 3, n = 4.
    #[test]
    fn maze_and_arc_presets_follow_the_spec_table() {
        let cases = [
            ("maze", 901, 6, 1),
            ("arc1", 901, 12, 876_408),
            ("arc2", 901, 12, 1_045_833),
            ("trm-maze", 916, 6, 1),
            ("trm-arc1", 916, 12, 876_408),
            ("trm-arc2", 916, 12, 1_045_833),
        ];
        for (name, seq, vocab, ids) in cases {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(
                (c.total_seq_len(), c.vocab_size, c.num_puzzle_identifiers),
                (seq, vocab, ids),
                "{name}"
            );
            assert_eq!(
                (c.hidden_size, c.num_heads, c.expansion, c.puzzle_emb_ndim),
                (512, 8, 4.0, 512),
                "{name}"
            );
            assert_eq!((c.halt_max_steps, c.halt_exploration_prob), (16, 0.1), "{name}");
            if c.is_trm() {
                assert_eq!((c.L_layers, c.H_cycles, c.L_cycles), (2, 3, 4), "{name}");
                assert!(!c.uses_mlp_t() && c.pos_encodings == PosEncodings::Rope, "{name}: attention, RoPE");
            } else {
                assert_eq!((c.H_layers, c.L_layers, c.H_cycles, c.L_cycles), (4, 4, 2, 2), "{name}");
            }
        }
        for (task, hrm, trm) in [
            (Task::Sudoku, "sudoku", "trm-sudoku-mlp"),
            (Task::Maze, "maze", "trm-maze"),
            (Task::Arc1, "arc1", "trm-arc1"),
            (Task::Arc2, "arc2", "trm-arc2"),
        ] {
            assert_eq!((task.preset(Arch::Hrm), task.preset(Arch::Trm)), (hrm, trm));
        }
        for (name, _) in ModelConfig::PRESETS {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
        let e = ModelConfig::preset("mazes").unwrap_err().to_string();
        assert!(e.contains("trm-arc2") && e.contains("maze"), "{e}");
    }

    #[test]
    fn sudoku_config_matches_paper_parameter_count() {
        let c = ModelConfig::sudoku();
        assert_eq!(c.intermediate_size(), 1536);
        assert_eq!(c.puzzle_emb_len(), 1);
        assert_eq!(c.total_seq_len(), 82);
        assert_eq!(c.num_trainable_params(), 27_275_266);
    }

    #[test]
    fn trm_configs_match_the_reference_parameter_counts() {
        let mlp = ModelConfig::trm_sudoku_mlp();
        assert_eq!((mlp.puzzle_emb_len(), mlp.total_seq_len()), (16, 97));
        assert_eq!(mlp.token_intermediate_size(), 512);
        assert_eq!(mlp.num_trainable_params(), 5_028_866);
        assert_eq!(ModelConfig::trm_sudoku_att().num_trainable_params(), 6_828_034);
        // H_layers is ignored by TRM: one network of L_layers blocks.
        let mut four = ModelConfig::trm_sudoku_att();
        four.H_layers = 4;
        assert_eq!(four.num_trainable_params(), 6_828_034);
        for c in [mlp, ModelConfig::trm_sudoku_att()] {
            c.validate().unwrap();
            let j = c.to_json();
            for k in ["\"arch\": \"trm\"", "\"mlp_t\"", "\"puzzle_emb_len\": 16", "\"no_ACT_continue\": true"]
            {
                assert!(j.contains(k), "{k} in {j}");
            }
            assert_eq!(ModelConfig::from_json_str(&j).unwrap(), c);
        }
        // puzzle_emb_len 0 fits the prefix to the embedding, as HRM.
        let mut fit = ModelConfig::trm_sudoku_att();
        fit.puzzle_emb_len = Some(0);
        assert_eq!(fit.puzzle_emb_len(), 1);
    }

    #[test]
    fn trm_keys_and_no_positions_are_refused_in_an_hrm_config() {
        let j = ModelConfig::tiny().to_json();
        assert!(!j.contains("arch") && !j.contains("mlp_t"), "HRM configs keep the reference's keys: {j}");
        let with = j.replacen('{', "{\"mlp_t\": true,", 1);
        let e = format!("{:#}", ModelConfig::from_json_str(&with).unwrap_err());
        assert!(e.contains("mlp_t") && e.contains("arch"), "{e}");
        let none = j.replace("\"rope\"", "\"none\"");
        let e = format!("{:#}", ModelConfig::from_json_str(&none).unwrap_err());
        assert!(e.contains("pos_encodings none"), "{e}");
        let mut small = ModelConfig::trm_sudoku_att();
        small.puzzle_emb_ndim = 2048;
        small.puzzle_emb_len = Some(2);
        assert!(small.validate().unwrap_err().to_string().contains("puzzle_emb_len 2"));
    }

    #[test]
    fn json_round_trip_and_key_names() {
        let c = ModelConfig::tiny();
        let j = c.to_json();
        assert!(j.contains("\"H_layers\"") && j.contains("\"pos_encodings\": \"rope\""));
        assert_eq!(ModelConfig::from_json_str(&j).unwrap(), c);
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_named() {
        let mut c = ModelConfig::tiny();
        c.num_heads = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_heads"), "{e}");
        let j = ModelConfig::tiny().to_json().replace("\"H_layers\"", "\"h_layers\"");
        let e = format!("{:#}", ModelConfig::from_json_str(&j).unwrap_err());
        assert!(e.contains("h_layers"), "{e}");
        let j = ModelConfig::tiny().to_json().replace("\"rope\"", "\"alibi\"");
        assert!(ModelConfig::from_json_str(&j).is_err());
    }
}
