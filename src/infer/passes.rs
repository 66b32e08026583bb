//! The passes of perturbed inference (a puzzle under one perturbation with one checkpoint) and
//! their table: what `augmented` produces and `select` scores, in a module of its own so that
//! neither of those imports the other's internals.

/// One pass: a puzzle under one perturbation with one checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub checkpoint: usize,
    pub perturbation: usize,
    /// The answer as token ids per cell (argmax), mapped back to the original puzzle.
    pub tokens: Vec<u8>,
    /// Q logits of the pass's last segment.
    pub q_halt: f32,
    pub q_continue: f32,
    /// Segments the pass ran.
    pub segments: u32,
    /// The model halts on q_halt > 0 alone (TRM's `no_ACT_continue`), not on q_halt >
    /// q_continue (HRM).
    pub halt_at_zero: bool,
}

impl Pass {
    /// Augmented HRM's act_halt: the model would halt here (HRM: q_halt > q_continue; TRM:
    /// q_halt > 0, see [`crate::act::wants_halt`]).
    pub fn halted(&self) -> bool {
        crate::act::wants_halt(self.halt_at_zero, self.q_halt, self.q_continue)
    }
}

/// Every pass of a run, grouped by puzzle: the passes of puzzle `p` are
/// `passes[p * per_puzzle..(p + 1) * per_puzzle]`, ordered by checkpoint then perturbation.
#[derive(Clone, Debug, Default)]
pub struct PassTable {
    pub puzzles: usize,
    pub checkpoints: usize,
    pub perturbations: usize,
    pub passes: Vec<Pass>,
}

impl PassTable {
    pub fn per_puzzle(&self) -> usize {
        self.checkpoints * self.perturbations
    }
    pub fn of_puzzle(&self, p: usize) -> &[Pass] {
        let k = self.per_puzzle();
        &self.passes[p * k..(p + 1) * k]
    }
}
