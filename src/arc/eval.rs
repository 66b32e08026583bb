//! A built ARC test split as an evaluation set (TASKS_SPEC section 3.5): every row (a test
//! input of an evaluation task under one variant, with that variant's puzzle identifier) is
//! run by the model; the predictions go to `super::vote` with each row's task, test input and
//! augmentation, read back from the split's groups and puzzles and the variant names of
//! `identifiers.json`. The tasks' true test outputs are the identity variant's labels, cropped.

use super::sequence::crop;
use super::vote::{ArcScores, Candidate, Prediction, rank, score};
use super::{Aug, Pair, Task};
use crate::dataset::Split;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// What voting needs of each row of an ARC evaluation set.
#[derive(Clone, Debug, PartialEq)]
pub struct ArcSet {
    /// the original tasks, with their test inputs and outputs (no demonstrations)
    pub tasks: Vec<Task>,
    /// per row: (task, test input, augmentation of the row's variant)
    pub rows: Vec<(usize, usize, Aug)>,
}

/// A row of an ARC evaluation set: input tokens, label tokens, puzzle identifier.
pub type Row = (Vec<u8>, Vec<u8>, i32);

/// The rows of the first `max_tasks` tasks (groups) of `split` (an ARC test split) with the
/// identifier names `names` (`identifiers.json`), in file order, and the [`ArcSet`].
pub fn read_split(
    split: &Split,
    names: &[String],
    max_tasks: Option<usize>,
    what: &str,
) -> Result<(Vec<Row>, ArcSet)> {
    let groups = split.num_groups().min(max_tasks.unwrap_or(usize::MAX));
    let mut rows = Vec::new();
    let mut set = ArcSet { tasks: Vec::new(), rows: Vec::new() };
    for g in 0..groups {
        let puzzles = split.group_indices[g] as usize..split.group_indices[g + 1] as usize;
        let mut task: Option<Task> = None;
        for p in puzzles {
            let id = split.puzzle_identifiers[p];
            let name = names.get(id as usize).with_context(|| {
                format!("{what}: puzzle {p} has identifier {id}, identifiers.json names {}", names.len())
            })?;
            let (task_name, aug) = Aug::parse(name);
            let examples = split.puzzle_indices[p] as usize..split.puzzle_indices[p + 1] as usize;
            let t = task.get_or_insert_with(|| Task {
                name: task_name.clone(),
                train: Vec::new(),
                test: Vec::new(),
            });
            if t.name != task_name {
                bail!("{what}: group {g} holds variants of {} and of {task_name}", t.name);
            }
            if aug == Aug::IDENTITY {
                t.test = examples
                    .clone()
                    .map(|i| {
                        let (x, y) = split.example(i);
                        Pair { input: crop(x), output: crop(y) }
                    })
                    .collect();
            }
            for (k, i) in examples.enumerate() {
                let (x, y) = split.example(i);
                rows.push((x.to_vec(), y.to_vec(), id));
                set.rows.push((set.tasks.len(), k, aug));
            }
        }
        let t = task.with_context(|| format!("{what}: group {g} is empty"))?;
        if t.test.is_empty() {
            bail!(
                "{what}: task {} has no identity variant (its bare name) to take the test outputs from",
                t.name
            );
        }
        if let Some(&(_, k, _)) =
            set.rows.iter().rev().find(|r| r.0 == set.tasks.len() && r.1 >= t.test.len())
        {
            bail!("{what}: task {} has {} test inputs, a variant has a test input {k}", t.name, t.test.len());
        }
        set.tasks.push(t);
    }
    Ok((rows, set))
}

/// Reads `identifiers.json` (identifier -> name).
pub fn read_identifiers(path: &Path) -> Result<Vec<String>> {
    let bytes = crate::fsutil::read_regular(path, "identifiers.json (the names of the puzzle identifiers)")?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: expected a list of names", path.display()))
}

/// The votes and scores of the model's answers to `set`'s rows (argmax canvases of 900
/// tokens and the last segment's q_halt, row by row).
pub fn vote(
    set: &ArcSet,
    canvases: &[u8],
    q_halt: &[f32],
) -> (BTreeMap<(usize, usize), Vec<Candidate>>, ArcScores) {
    let n = canvases.len() / set.rows.len().max(1);
    let preds: Vec<Prediction> = set
        .rows
        .iter()
        .zip(canvases.chunks(n.max(1)))
        .zip(q_halt)
        .map(|((&(task, test_index, aug), canvas), &q)| Prediction {
            task,
            test_index,
            aug,
            canvas: canvas.to_vec(),
            q_halt: q,
        })
        .collect();
    let ranked = rank(&preds);
    let scores = score(&ranked, &set.tasks);
    (ranked, scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arc::Grid;
    use crate::arc::build::{Source, build};

    fn task(name: &str, test: &[(&str, &str)]) -> Task {
        let pairs: Vec<Pair> = test
            .iter()
            .map(|(i, o)| Pair { input: Grid::from_text(i), output: Grid::from_text(o) })
            .collect();
        Task { name: name.into(), train: pairs[..1].to_vec(), test: pairs }
    }

    /// A built test split read back: the tasks' test pairs, and voting on the labels themselves
    /// (every variant right) passes everything, on the inputs (copying the input) nothing.
    #[test]
    fn a_built_test_split_reads_back_and_votes() {
        let sources = vec![
            Source { task: task("x", &[("12", "21"), ("3", "4")]), held_out: true },
            Source { task: task("y", &[("5/6", "6/5")]), held_out: true },
            Source { task: task("z", &[("7", "8")]), held_out: false },
        ];
        let b = build(&sources, 4, 3, &|_| {}).unwrap();
        let (rows, set) = read_split(&b.test, &b.names, None, "test").unwrap();
        assert_eq!(set.tasks.len(), 2);
        for t in &set.tasks {
            let src = &sources.iter().find(|s| s.task.name == t.name).unwrap().task;
            assert_eq!(t.test, src.test, "{}", t.name);
        }
        assert_eq!(rows.len(), b.test.num_examples());
        assert_eq!(rows.len(), set.rows.len());
        let labels: Vec<u8> = rows.iter().flat_map(|r| r.1.clone()).collect();
        let (ranked, s) = vote(&set, &labels, &vec![0.0; rows.len()]);
        assert_eq!((s.test_inputs, s.pass1_inputs, s.pass1_tasks), (3, 3, 2));
        // every variant agreed after de-augmentation
        for c in ranked.values() {
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].count, 5, "identity + 4 variants");
        }
        let inputs: Vec<u8> = rows.iter().flat_map(|r| r.0.clone()).collect();
        assert_eq!(vote(&set, &inputs, &vec![0.0; rows.len()]).1.pass2_inputs, 0);
        // a limit takes whole tasks
        let (rows1, set1) = read_split(&b.test, &b.names, Some(1), "test").unwrap();
        assert_eq!(set1.tasks.len(), 1);
        assert_eq!(rows1.len(), 5 * set1.tasks[0].test.len());
        // identifiers.json that does not name an identifier
        assert!(
            read_split(&b.test, &b.names[..2], None, "t").unwrap_err().to_string().contains("identifier")
        );
    }
}
