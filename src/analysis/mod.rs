//! Analysis and reporting tools: run plots (more of the paper's mechanistic analysis lands here).

pub mod plot;
