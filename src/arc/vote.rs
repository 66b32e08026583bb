//! ARC evaluation (TASKS_SPEC section 3.5): every variant's prediction of a test input is
//! cropped from its canvas, de-augmented to the original task's frame and counted; per test
//! input the candidates rank by count, then by mean halting confidence sigmoid(q_halt). pass@k:
//! the right grid is among the first k. Scores per test input and per task (a task counts when
//! all its test inputs pass, HRM's notebook; TRM's evaluator averages its test inputs instead,
//! also given). `submission` writes the ARC Prize JSON, two attempts per test input.

use super::sequence::crop;
use super::{Aug, Grid, Task};
use serde::Serialize;
use std::collections::BTreeMap;

/// One pass of the model: a test input of a task under one variant.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// index of the task in the evaluated list
    pub task: usize,
    /// index of the test input within the task
    pub test_index: usize,
    pub aug: Aug,
    /// the predicted canvas (900 tokens)
    pub canvas: Vec<u8>,
    pub q_halt: f32,
}

/// A distinct answer to a test input, with its votes.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub grid: Grid,
    pub count: usize,
    pub mean_q: f64,
}

/// Candidates per (task, test input), ranked (count, then mean sigmoid(q_halt), both
/// descending; equal ones in order of first appearance).
pub fn rank(preds: &[Prediction]) -> BTreeMap<(usize, usize), Vec<Candidate>> {
    // (`mean_q` holds the sum of the confidences until the end)
    let mut votes: BTreeMap<(usize, usize), Vec<Candidate>> = BTreeMap::new();
    for p in preds {
        let grid = p.aug.invert(&crop(&p.canvas));
        let q = 1.0 / (1.0 + (-(p.q_halt as f64)).exp());
        let list = votes.entry((p.task, p.test_index)).or_default();
        match list.iter_mut().find(|c| c.grid == grid) {
            Some(c) => {
                c.count += 1;
                c.mean_q += q;
            }
            None => list.push(Candidate { grid, count: 1, mean_q: q }),
        }
    }
    for list in votes.values_mut() {
        for c in list.iter_mut() {
            c.mean_q /= c.count as f64;
        }
        // stable: equal candidates keep their order of first appearance
        list.sort_by(|a, b| b.count.cmp(&a.count).then(b.mean_q.total_cmp(&a.mean_q)));
    }
    votes
}

/// pass@1 and pass@2 over test inputs and over tasks.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ArcScores {
    pub test_inputs: usize,
    pub pass1_inputs: usize,
    pub pass2_inputs: usize,
    pub tasks: usize,
    /// tasks whose every test input passes (HRM's notebook)
    pub pass1_tasks: usize,
    pub pass2_tasks: usize,
    /// the mean over tasks of the fraction of their test inputs that pass (TRM's evaluator)
    pub pass2_task_mean: f64,
}

/// Scores `ranked` against the test outputs of `tasks` (a test input without predictions
/// fails).
pub fn score(ranked: &BTreeMap<(usize, usize), Vec<Candidate>>, tasks: &[Task]) -> ArcScores {
    let mut s = ArcScores { tasks: tasks.len(), ..Default::default() };
    let mut mean = 0.0;
    for (t, task) in tasks.iter().enumerate() {
        let (mut all1, mut all2, mut n2) = (true, true, 0);
        for (k, pair) in task.test.iter().enumerate() {
            let c = ranked.get(&(t, k)).map(|c| &c[..]).unwrap_or(&[]);
            let within = |n: usize| c.iter().take(n).any(|x| x.grid == pair.output);
            let (p1, p2) = (within(1), within(2));
            s.test_inputs += 1;
            s.pass1_inputs += p1 as usize;
            s.pass2_inputs += p2 as usize;
            n2 += p2 as usize;
            all1 &= p1;
            all2 &= p2;
        }
        s.pass1_tasks += all1 as usize;
        s.pass2_tasks += all2 as usize;
        mean += n2 as f64 / task.test.len().max(1) as f64;
    }
    s.pass2_task_mean = mean / tasks.len().max(1) as f64;
    s
}

fn rows_of(g: &Grid) -> Vec<Vec<u8>> {
    if g.cols == 0 {
        return vec![vec![0]];
    }
    g.cells.chunks(g.cols).map(|r| r.to_vec()).collect()
}

/// The ARC Prize submission: `{task: [{"attempt_1": grid, "attempt_2": grid}, ...]}`, one
/// entry per test input in order; with one candidate it is both attempts (as TRM writes it),
/// with none both are `[[0]]`.
pub fn submission(ranked: &BTreeMap<(usize, usize), Vec<Candidate>>, tasks: &[Task]) -> serde_json::Value {
    let empty = Grid { rows: 1, cols: 1, cells: vec![0] };
    let mut out = serde_json::Map::new();
    for (t, task) in tasks.iter().enumerate() {
        let inputs: Vec<serde_json::Value> = (0..task.test.len())
            .map(|k| {
                let c = ranked.get(&(t, k)).map(|c| &c[..]).unwrap_or(&[]);
                let attempt = |i: usize| rows_of(c.get(i).or(c.first()).map(|x| &x.grid).unwrap_or(&empty));
                serde_json::json!({ "attempt_1": attempt(0), "attempt_2": attempt(1) })
            })
            .collect();
        out.insert(task.name.clone(), serde_json::Value::Array(inputs));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::super::Pair;
    use super::super::sequence::to_canvas;
    use super::*;

    fn g(rows: &[&[u8]]) -> Grid {
        Grid::from_rows(rows)
    }

    /// A prediction of `answer` (in the original frame) as a model under `aug` would emit it:
    /// augmented, on a canvas at the origin.
    fn pred(task: usize, test_index: usize, aug: Aug, answer: &Grid, q_halt: f32) -> Prediction {
        Prediction { task, test_index, aug, canvas: to_canvas(&aug.apply(answer), 0, 0), q_halt }
    }

    #[test]
    fn votes_rank_by_count_then_confidence_and_score_pass_at_k() {
        let right0 = g(&[&[1, 2], &[3, 4]]);
        let right1 = g(&[&[5, 5, 0]]);
        let wrong = g(&[&[9]]);
        let other = g(&[&[1, 2], &[3, 3]]);
        let tasks = vec![
            Task {
                name: "a".into(),
                train: vec![],
                test: vec![
                    Pair { input: wrong.clone(), output: right0.clone() },
                    Pair { input: wrong.clone(), output: right1.clone() },
                ],
            },
            Task {
                name: "b".into(),
                train: vec![],
                test: vec![Pair { input: wrong.clone(), output: right0.clone() }],
            },
        ];
        let augs = [
            Aug::IDENTITY,
            Aug { tid: 1, map: [0, 2, 3, 1, 4, 5, 6, 7, 8, 9] },
            Aug { tid: 6, map: [0, 9, 8, 7, 6, 5, 4, 3, 2, 1] },
            Aug { tid: 3, map: [0, 1, 2, 3, 4, 6, 5, 7, 8, 9] },
        ];
        let preds = vec![
            // task a, input 0: right twice (low q), wrong twice (high q), other once: count ties
            // go to confidence -> wrong first, right second: pass@2 only
            pred(0, 0, augs[0], &right0, -2.0),
            pred(0, 0, augs[1], &wrong, 3.0),
            pred(0, 0, augs[2], &right0, -1.0),
            pred(0, 0, augs[3], &wrong, 2.0),
            pred(0, 0, augs[1], &other, 5.0),
            // task a, input 1: right 3 times: pass@1
            pred(0, 1, augs[0], &right1, 0.0),
            pred(0, 1, augs[1], &right1, 0.0),
            pred(0, 1, augs[2], &right1, 0.0),
            pred(0, 1, augs[3], &wrong, 9.0),
            // task b: right once, wrong and other once each with higher q: third -> fails
            pred(1, 0, augs[2], &right0, -3.0),
            pred(1, 0, augs[1], &wrong, 1.0),
            pred(1, 0, augs[0], &other, 2.0),
        ];
        let r = rank(&preds);
        // de-augmentation: every variant's answer came back to the original frame
        assert_eq!(
            r[&(0, 0)].iter().map(|c| (c.grid.clone(), c.count)).collect::<Vec<_>>(),
            vec![(wrong.clone(), 2), (right0.clone(), 2), (other.clone(), 1)]
        );
        assert_eq!(r[&(0, 1)][0], Candidate { grid: right1.clone(), count: 3, mean_q: 0.5 });
        assert_eq!(
            r[&(1, 0)].iter().map(|c| c.grid.clone()).collect::<Vec<_>>(),
            vec![other.clone(), wrong.clone(), right0.clone()]
        );
        let s = score(&r, &tasks);
        assert_eq!(
            s,
            ArcScores {
                test_inputs: 3,
                pass1_inputs: 1,
                pass2_inputs: 2,
                tasks: 2,
                pass1_tasks: 0,
                pass2_tasks: 1,
                pass2_task_mean: 0.5,
            }
        );
        let sub = submission(&r, &tasks);
        assert_eq!(sub["a"][0]["attempt_1"], serde_json::json!([[9]]));
        assert_eq!(sub["a"][0]["attempt_2"], serde_json::json!([[1, 2], [3, 4]]));
        assert_eq!(sub["a"][1]["attempt_2"], serde_json::json!([[9]]));
        assert_eq!(sub["b"].as_array().unwrap().len(), 1);
        // a test input nobody predicted fails and submits [[0]]
        let none = rank(&[]);
        assert_eq!(score(&none, &tasks[1..]).pass2_inputs, 0);
        assert_eq!(submission(&none, &tasks[1..])["b"][0]["attempt_1"], serde_json::json!([[0]]));
        assert_eq!(submission(&none, &tasks[1..])["b"][0]["attempt_2"], serde_json::json!([[0]]));
        // one candidate: both attempts
        let one = rank(&preds[5..6]);
        let sub = submission(&one, &tasks[..1]);
        assert_eq!(sub["a"][1]["attempt_1"], sub["a"][1]["attempt_2"]);
        assert_eq!(sub["a"][1]["attempt_1"], serde_json::json!([[5, 5, 0]]));
    }
}
