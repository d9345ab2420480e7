//! Genotypes: the discrete architectures DARTS reads off its continuous architecture weights α,
//! the published ones (NASNet, AmoebaNet, DARTS V1/V2 and the recurrent cells), and the decoding
//! rule that turns α into a genotype (the original `genotypes.py` plus the `genotype()` methods of
//! its search models).
//!
//! A CNN cell is a list of `(op, input)` pairs, two per intermediate node: entries `2i` and
//! `2i + 1` feed node `i`, and `input` names a state of the cell (0 = c_{k-2}, 1 = c_{k-1},
//! 2 + m = node m). A recurrent cell has one pair per node: entry `i` feeds node `i + 1` and its
//! input names a state (0 = the init state s0, n = node n).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::device::cpu::softmax::{Lanes, softmax};
use crate::{Error, Result};

/// The CNN candidate ops, in the column order of α.
pub const PRIMITIVES: [&str; 8] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
];

/// Ops the evaluation cell knows besides the primitives; only the NASNet and AmoebaNet reference
/// genotypes use them, the search never proposes them.
pub const EXTRA_OPS: [&str; 2] = ["sep_conv_7x7", "conv_7x1_1x7"];

/// The recurrent candidate activations, in the column order of the RNN α.
pub const RNN_PRIMITIVES: [&str; 5] = ["none", "tanh", "relu", "sigmoid", "identity"];

/// Intermediate nodes of the CNN search cell.
pub const STEPS: usize = 4;

/// Intermediate nodes whose outputs the CNN search cell concatenates (its last `MULTIPLIER`).
pub const MULTIPLIER: usize = 4;

/// Learned nodes of the recurrent cell (all of them are averaged into the output).
pub const RNN_STEPS: usize = 8;

/// One entry of a cell: the op (or activation) name and the state it reads.
pub type CellEntry = (String, usize);

/// A CNN architecture: the normal and the reduction cell, each with the states it concatenates
/// into its output. JSON form:
/// `{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...], "reduce_concat": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genotype {
    /// Normal cell, two entries per intermediate node.
    pub normal: Vec<CellEntry>,
    /// States concatenated into the normal cell's output.
    pub normal_concat: Vec<usize>,
    /// Reduction cell, two entries per intermediate node.
    pub reduce: Vec<CellEntry>,
    /// States concatenated into the reduction cell's output.
    pub reduce_concat: Vec<usize>,
}

/// A recurrent architecture: one `(activation, predecessor)` entry per learned node and the
/// states averaged into the cell's output. JSON form: `{"recurrent": [["sigmoid", 0], ...], "concat": [1, ..., 8]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnGenotype {
    /// Entry `i` feeds node `i + 1`.
    pub recurrent: Vec<CellEntry>,
    /// States averaged into the output (0 = s0, n = node n).
    pub concat: Vec<usize>,
}

/// How a cell is wired: what the validator and the decoder need to know about one search space.
struct CellKind {
    /// Names the cell in messages.
    name: &'static str,
    /// Column names of α (`none` first).
    primitives: &'static [&'static str],
    /// Op names a genotype may use, in groups.
    known_ops: &'static [&'static [&'static str]],
    /// States that exist before the first node (2 for CNN cells, s0 for the recurrent cell).
    inputs: usize,
    /// Entries (kept edges) per node.
    per_node: usize,
}

impl CellKind {
    /// Rows of α for `steps` nodes: node `i` has one row per earlier state.
    fn edges(&self, steps: usize) -> usize {
        self.inputs * steps + steps * steps.saturating_sub(1) / 2
    }

    /// Human name of state `s`, matching the pictures (c_{k-2}, c_{k-1}, 0, 1, ... for CNN
    /// cells; 0 = s0, 1, 2, ... for the recurrent cell).
    fn state_name(&self, s: usize) -> String {
        match (self.inputs, s) {
            (2, 0) => "c_{k-2}".to_string(),
            (2, 1) => "c_{k-1}".to_string(),
            (2, s) => (s - 2).to_string(),
            (_, s) => s.to_string(),
        }
    }

    /// Human name of the node that entry/row group `i` feeds.
    fn node_name(&self, i: usize) -> String {
        self.state_name(self.inputs + i)
    }

    /// Checks a cell: known ops, whole nodes, inputs only from earlier states, concat in range.
    fn validate(&self, entries: &[CellEntry], concat: &[usize]) -> Result<()> {
        let bad = |message: String| {
            Err(Error::invalid(
                "genotype",
                format!("{}: {message}", self.name),
            ))
        };
        if entries.is_empty() {
            return bad("has no entries".to_string());
        }
        if !entries.len().is_multiple_of(self.per_node) {
            return bad(format!(
                "has {} entries, but every node takes exactly {} (the count must be a multiple of {})",
                entries.len(),
                self.per_node,
                self.per_node
            ));
        }
        for (e, (op, input)) in entries.iter().enumerate() {
            let node = e / self.per_node;
            if !self
                .known_ops
                .iter()
                .any(|group| group.contains(&op.as_str()))
            {
                return bad(format!(
                    "entry {e} (node {}) has unknown op `{op}`; known ops: {}",
                    self.node_name(node),
                    self.known_ops.concat().join(", ")
                ));
            }
            let available = self.inputs + node;
            if *input >= available {
                return bad(format!(
                    "entry {e} (node {}) reads state {input}, but that node can only read states 0 to {} ({})",
                    self.node_name(node),
                    available - 1,
                    self.state_legend()
                ));
            }
        }
        let states = self.inputs + entries.len() / self.per_node;
        if concat.is_empty() {
            return bad("concat list is empty".to_string());
        }
        if let Some(s) = concat.iter().find(|&&s| s >= states) {
            return bad(format!(
                "concat names state {s}, but the cell only has states 0 to {} ({})",
                states - 1,
                self.state_legend()
            ));
        }
        Ok(())
    }

    /// What state numbers mean, for error messages.
    fn state_legend(&self) -> &'static str {
        if self.inputs == 2 {
            "0 = c_{k-2}, 1 = c_{k-1}, 2 + m = node m"
        } else {
            "0 = s0, n = node n"
        }
    }

    /// The decoding rule: for node `i`, rank its incoming edges by their strongest non-`none`
    /// softmax weight (a stable sort, so ties keep the lower predecessor first), keep the
    /// `per_node` strongest in that descending order, and give each its strongest non-`none` op
    /// (strict `>`, so the first maximum wins). `weights` is the row-wise softmax of α.
    fn decode(&self, weights: &[f32], steps: usize) -> Vec<CellEntry> {
        let cols = self.primitives.len();
        let none = self.primitives.iter().position(|&p| p == "none");
        let best_op = |row: &[f32]| {
            let mut best: Option<usize> = None;
            for (k, &w) in row.iter().enumerate() {
                if Some(k) != none && best.is_none_or(|b| w > row[b]) {
                    best = Some(k);
                }
            }
            best.expect("every search space has an op besides `none`")
        };
        let mut gene = Vec::with_capacity(steps * self.per_node);
        let mut start = 0;
        for i in 0..steps {
            let rows: Vec<&[f32]> = weights[start * cols..][..(self.inputs + i) * cols]
                .chunks(cols)
                .collect();
            let strength: Vec<f32> = rows.iter().map(|row| row[best_op(row)]).collect();
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]));
            for &j in order.iter().take(self.per_node) {
                gene.push((self.primitives[best_op(rows[j])].to_string(), j));
            }
            start += rows.len();
        }
        gene
    }

    /// One label per α row: `node i <- predecessor`.
    fn row_labels(&self, steps: usize) -> Vec<String> {
        (0..steps)
            .flat_map(|i| {
                (0..self.inputs + i)
                    .map(move |j| format!("node {} <- {}", self.node_name(i), self.state_name(j)))
            })
            .collect()
    }

    /// The node count whose α has `rows` rows, if there is one.
    fn steps_for_rows(&self, rows: usize) -> Option<usize> {
        (1..=rows).find(|&s| self.edges(s) == rows)
    }

    /// Checks α's size and values for `steps` nodes and returns its row-wise softmax.
    fn weights(
        &self,
        op: &'static str,
        what: &str,
        alphas: &[f32],
        steps: usize,
    ) -> Result<Vec<f32>> {
        let (edges, cols) = (self.edges(steps), self.primitives.len());
        if alphas.len() != edges * cols {
            return Err(Error::invalid(
                op,
                format!(
                    "{what} has {} values, expected {edges} edges x {cols} ops = {} for steps = {steps}",
                    alphas.len(),
                    edges * cols
                ),
            ));
        }
        if let Some(i) = alphas.iter().position(|a| !a.is_finite()) {
            return Err(Error::invalid(
                op,
                format!(
                    "{what}[{i}] = {} is not finite (did the search diverge?)",
                    alphas[i]
                ),
            ));
        }
        softmax_rows(alphas, cols)
    }

    /// The α table of [`alpha_table`] for this search space.
    fn table(&self, alphas: &[f32], title: &str) -> Result<String> {
        let cols = self.primitives.len();
        let weights = softmax_rows(alphas, cols)?;
        let rows = alphas.len() / cols;
        let steps = self.steps_for_rows(rows).ok_or_else(|| {
            Error::invalid(
                "alpha_table",
                format!(
                    "{rows} rows of {cols} do not make a {} of any size",
                    self.name
                ),
            )
        })?;
        let labels = self.row_labels(steps);
        let label_width = labels.iter().map(String::len).max().unwrap_or(0);
        let mut out = format!("{title}\n{:label_width$}", "");
        for name in self.primitives {
            out += &format!("  {name:>w$}", w = name.len().max(5));
        }
        for (label, row) in labels.iter().zip(weights.chunks(cols)) {
            out += &format!("\n{label:<label_width$}");
            for (name, w) in self.primitives.iter().zip(row) {
                out += &format!("  {w:>width$.3}", width = name.len().max(5));
            }
        }
        out.push('\n');
        Ok(out)
    }
}

const NORMAL: CellKind = CellKind {
    name: "normal cell",
    primitives: &PRIMITIVES,
    known_ops: &[&PRIMITIVES, &EXTRA_OPS],
    inputs: 2,
    per_node: 2,
};

const REDUCE: CellKind = CellKind {
    name: "reduction cell",
    ..NORMAL
};

const RECURRENT: CellKind = CellKind {
    name: "recurrent cell",
    primitives: &RNN_PRIMITIVES,
    known_ops: &[&["tanh", "relu", "sigmoid", "identity"]],
    inputs: 1,
    per_node: 1,
};

impl Genotype {
    /// Checks both cells: known op names (the primitives plus [`EXTRA_OPS`]), two entries per
    /// node, every input an earlier state (`< 2 + node`), concat lists non-empty and in range.
    pub fn validate(&self) -> Result<()> {
        NORMAL.validate(&self.normal, &self.normal_concat)?;
        REDUCE.validate(&self.reduce, &self.reduce_concat)
    }

    /// Intermediate nodes of the normal cell.
    pub fn normal_steps(&self) -> usize {
        self.normal.len() / 2
    }

    /// Intermediate nodes of the reduction cell.
    pub fn reduce_steps(&self) -> usize {
        self.reduce.len() / 2
    }

    /// Parses and validates the JSON form.
    pub fn from_json(text: &str) -> Result<Genotype> {
        let genotype: Genotype = serde_json::from_str(text)
            .map_err(|e| Error::invalid("genotype", format!("bad genotype JSON: {e}")))?;
        genotype.validate()?;
        Ok(genotype)
    }

    /// The JSON form, one field per line.
    pub fn to_json(&self) -> String {
        json_lines(&[
            ("normal", json(&self.normal)),
            ("normal_concat", json(&self.normal_concat)),
            ("reduce", json(&self.reduce)),
            ("reduce_concat", json(&self.reduce_concat)),
        ])
    }
}

impl RnnGenotype {
    /// Checks the cell: known activations (`tanh`, `relu`, `sigmoid`, `identity`), every
    /// predecessor an earlier state (`<= node index`, 0 = s0), concat non-empty and in range.
    pub fn validate(&self) -> Result<()> {
        RECURRENT.validate(&self.recurrent, &self.concat)
    }

    /// Learned nodes of the cell.
    pub fn steps(&self) -> usize {
        self.recurrent.len()
    }

    /// Parses and validates the JSON form.
    pub fn from_json(text: &str) -> Result<RnnGenotype> {
        let genotype: RnnGenotype = serde_json::from_str(text)
            .map_err(|e| Error::invalid("genotype", format!("bad RNN genotype JSON: {e}")))?;
        genotype.validate()?;
        Ok(genotype)
    }

    /// The JSON form, one field per line.
    pub fn to_json(&self) -> String {
        json_lines(&[
            ("recurrent", json(&self.recurrent)),
            ("concat", json(&self.concat)),
        ])
    }
}

/// Compact JSON of a value that always serializes (plain lists of strings and numbers).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("lists of strings and integers always serialize")
}

/// A JSON object with one `"key": value` per line.
fn json_lines(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

/// Python's repr of a cell, `[('sep_conv_3x3', 0), ...]`, as the original logs it.
fn python_cell(entries: &[CellEntry]) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|(op, j)| format!("('{op}', {j})"))
        .collect();
    format!("[{}]", items.join(", "))
}

/// The original's log form: `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)`.
impl fmt::Display for Genotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Genotype(normal={}, normal_concat={:?}, reduce={}, reduce_concat={:?})",
            python_cell(&self.normal),
            self.normal_concat,
            python_cell(&self.reduce),
            self.reduce_concat
        )
    }
}

/// The original's log form: `Genotype(recurrent=[('sigmoid', 0), ...], concat=[1, ..., 8])`.
impl fmt::Display for RnnGenotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Genotype(recurrent={}, concat={:?})",
            python_cell(&self.recurrent),
            self.concat
        )
    }
}

/// Row-wise softmax of a row-major `[rows x cols]` matrix (the weights the search network puts on
/// its candidate ops). Errors when `cols` is 0 or the length is not a positive multiple of it.
pub fn softmax_rows(alphas: &[f32], cols: usize) -> Result<Vec<f32>> {
    if cols == 0 || alphas.is_empty() || !alphas.len().is_multiple_of(cols) {
        return Err(Error::invalid(
            "softmax_rows",
            format!(
                "{} values do not make whole rows of {cols} (need a positive multiple)",
                alphas.len()
            ),
        ));
    }
    let lanes = Lanes {
        outer: alphas.len() / cols,
        size: cols,
        inner: 1,
    };
    Ok(softmax(alphas, lanes))
}

/// Derives the CNN genotype from raw α logits (row-major `[edges x 8]`, `edges = 2 + 3 + ... +
/// (steps + 1)`, 14 for 4 steps): row-wise softmax, then per node the 2 edges with the largest
/// non-`none` weight (descending, ties to the lower predecessor), each with its best non-`none`
/// op (first maximum wins); both cells concatenate states `2 + steps - multiplier .. 2 + steps`.
/// `none` is excluded so that every node gets exactly two real inputs.
pub fn derive_genotype(
    alphas_normal: &[f32],
    alphas_reduce: &[f32],
    steps: usize,
    multiplier: usize,
) -> Result<Genotype> {
    if steps == 0 || multiplier == 0 || multiplier > steps {
        return Err(Error::invalid(
            "derive_genotype",
            format!(
                "need steps >= 1 and 1 <= multiplier <= steps, got steps = {steps}, multiplier = {multiplier}"
            ),
        ));
    }
    let normal = NORMAL.decode(
        &NORMAL.weights("derive_genotype", "alphas_normal", alphas_normal, steps)?,
        steps,
    );
    let reduce = REDUCE.decode(
        &REDUCE.weights("derive_genotype", "alphas_reduce", alphas_reduce, steps)?,
        steps,
    );
    let concat: Vec<usize> = (2 + steps - multiplier..2 + steps).collect();
    Ok(Genotype {
        normal,
        normal_concat: concat.clone(),
        reduce,
        reduce_concat: concat,
    })
}

/// Derives the recurrent genotype from raw α logits (row-major `[edges x 5]`, `edges = 1 + 2 +
/// ... + steps`, 36 for 8 steps): row-wise softmax, then for node `i` the predecessor with the
/// largest non-`none` weight (first wins on ties) and its best non-`none` activation; the output
/// averages nodes `1..=steps`.
pub fn derive_rnn_genotype(alphas: &[f32], steps: usize) -> Result<RnnGenotype> {
    if steps == 0 {
        return Err(Error::invalid(
            "derive_rnn_genotype",
            "need steps >= 1, got 0",
        ));
    }
    let recurrent = RECURRENT.decode(
        &RECURRENT.weights("derive_rnn_genotype", "alphas", alphas, steps)?,
        steps,
    );
    Ok(RnnGenotype {
        recurrent,
        concat: (1..=steps).collect(),
    })
}

/// A readable table of the CNN softmax weights for logs: one row per edge, labelled
/// `node i <- predecessor` (c_{k-2}, c_{k-1} or an earlier node), one column per primitive, three
/// decimals, under `title`. The node count is inferred from the row count (14 rows = 4 nodes).
pub fn alpha_table(alphas: &[f32], title: &str) -> Result<String> {
    NORMAL.table(alphas, title)
}

/// [`alpha_table`] for the recurrent α (`[edges x 5]`, rows `node n <- predecessor`, 0 = s0).
pub fn rnn_alpha_table(alphas: &[f32], title: &str) -> Result<String> {
    RECURRENT.table(alphas, title)
}

/// A cell written as static data.
type StaticCell = &'static [(&'static str, usize)];

fn owned(cell: StaticCell) -> Vec<CellEntry> {
    cell.iter().map(|&(op, j)| (op.to_string(), j)).collect()
}

/// A published CNN genotype written as static data.
struct Builtin {
    name: &'static str,
    normal: StaticCell,
    normal_concat: &'static [usize],
    reduce: StaticCell,
    reduce_concat: &'static [usize],
}

/// The published CNN genotypes (`DARTS` is `DARTS_V2`, the original's default).
const BUILTINS: [Builtin; 5] = [
    Builtin {
        name: "NASNet",
        normal: &[
            ("sep_conv_5x5", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 0),
            ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1),
            ("skip_connect", 0),
            ("avg_pool_3x3", 0),
            ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1),
            ("skip_connect", 1),
        ],
        normal_concat: &[2, 3, 4, 5, 6],
        reduce: &[
            ("sep_conv_5x5", 1),
            ("sep_conv_7x7", 0),
            ("max_pool_3x3", 1),
            ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1),
            ("sep_conv_5x5", 0),
            ("skip_connect", 3),
            ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2),
            ("max_pool_3x3", 1),
        ],
        reduce_concat: &[4, 5, 6],
    },
    Builtin {
        name: "AmoebaNet",
        normal: &[
            ("avg_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 3),
            ("sep_conv_3x3", 1),
            ("skip_connect", 1),
            ("skip_connect", 0),
            ("avg_pool_3x3", 1),
        ],
        normal_concat: &[4, 5, 6],
        reduce: &[
            ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1),
            ("max_pool_3x3", 0),
            ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0),
            ("sep_conv_3x3", 5),
        ],
        reduce_concat: &[3, 4, 6],
    },
    Builtin {
        name: "DARTS_V1",
        normal: DARTS_V1_NORMAL,
        normal_concat: &[2, 3, 4, 5],
        reduce: DARTS_V1_REDUCE,
        reduce_concat: &[2, 3, 4, 5],
    },
    Builtin {
        name: "DARTS_V2",
        normal: DARTS_V2_NORMAL,
        normal_concat: &[2, 3, 4, 5],
        reduce: DARTS_V2_REDUCE,
        reduce_concat: &[2, 3, 4, 5],
    },
    Builtin {
        name: "DARTS",
        normal: DARTS_V2_NORMAL,
        normal_concat: &[2, 3, 4, 5],
        reduce: DARTS_V2_REDUCE,
        reduce_concat: &[2, 3, 4, 5],
    },
];

const DARTS_V1_NORMAL: StaticCell = &[
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("skip_connect", 0),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("skip_connect", 2),
];

const DARTS_V1_REDUCE: StaticCell = &[
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("avg_pool_3x3", 0),
];

const DARTS_V2_NORMAL: StaticCell = &[
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
];

const DARTS_V2_REDUCE: StaticCell = &[
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
];

/// A published recurrent genotype written as static data.
struct RnnBuiltin {
    name: &'static str,
    recurrent: StaticCell,
    concat: &'static [usize],
}

/// The published recurrent genotypes (`DARTS` is `DARTS_V2`, the original's default; `ENAS` is
/// the ENAS cell the original ships for comparison).
const RNN_BUILTINS: [RnnBuiltin; 4] = [
    RnnBuiltin {
        name: "DARTS_V1",
        recurrent: RNN_DARTS_V1,
        concat: &[1, 2, 3, 4, 5, 6, 7, 8],
    },
    RnnBuiltin {
        name: "DARTS_V2",
        recurrent: RNN_DARTS_V2,
        concat: &[1, 2, 3, 4, 5, 6, 7, 8],
    },
    RnnBuiltin {
        name: "DARTS",
        recurrent: RNN_DARTS_V2,
        concat: &[1, 2, 3, 4, 5, 6, 7, 8],
    },
    RnnBuiltin {
        name: "ENAS",
        recurrent: &[
            ("tanh", 0),
            ("tanh", 1),
            ("relu", 1),
            ("tanh", 3),
            ("tanh", 3),
            ("relu", 3),
            ("relu", 4),
            ("relu", 7),
            ("relu", 8),
            ("relu", 8),
            ("relu", 8),
        ],
        concat: &[2, 5, 6, 9, 10, 11],
    },
];

const RNN_DARTS_V1: StaticCell = &[
    ("relu", 0),
    ("relu", 1),
    ("tanh", 2),
    ("relu", 3),
    ("relu", 4),
    ("identity", 1),
    ("relu", 5),
    ("relu", 1),
];

const RNN_DARTS_V2: StaticCell = &[
    ("sigmoid", 0),
    ("relu", 1),
    ("relu", 1),
    ("identity", 1),
    ("tanh", 2),
    ("sigmoid", 5),
    ("tanh", 3),
    ("relu", 5),
];

/// Names accepted by [`builtin`].
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// Names accepted by [`builtin_rnn`].
pub fn builtin_rnn_names() -> Vec<&'static str> {
    RNN_BUILTINS.iter().map(|b| b.name).collect()
}

fn unknown(kind: &str, name: &str, names: &[&str]) -> Error {
    Error::invalid(
        "genotype",
        format!("unknown {kind} `{name}`; built-in: {}", names.join(", ")),
    )
}

/// A published CNN genotype by name (NASNet, AmoebaNet, DARTS_V1, DARTS_V2, DARTS = DARTS_V2;
/// case-insensitive). An unknown name is an error listing the known ones.
pub fn builtin(name: &str) -> Result<Genotype> {
    BUILTINS
        .iter()
        .find(|b| b.name.eq_ignore_ascii_case(name))
        .map(|b| Genotype {
            normal: owned(b.normal),
            normal_concat: b.normal_concat.to_vec(),
            reduce: owned(b.reduce),
            reduce_concat: b.reduce_concat.to_vec(),
        })
        .ok_or_else(|| unknown("genotype", name, &builtin_names()))
}

/// A published recurrent genotype by name (DARTS_V1, DARTS_V2, DARTS = DARTS_V2, ENAS;
/// case-insensitive). An unknown name is an error listing the known ones.
pub fn builtin_rnn(name: &str) -> Result<RnnGenotype> {
    RNN_BUILTINS
        .iter()
        .find(|b| b.name.eq_ignore_ascii_case(name))
        .map(|b| RnnGenotype {
            recurrent: owned(b.recurrent),
            concat: b.concat.to_vec(),
        })
        .ok_or_else(|| unknown("RNN genotype", name, &builtin_rnn_names()))
}

/// Reads a genotype file, turning every failure into an error that names the file (and, when the
/// file does not exist, the built-in names the argument could have meant).
fn load_file<T>(path: &str, names: &[&str], parse: impl FnOnce(&str) -> Result<T>) -> Result<T> {
    let text = std::fs::read_to_string(Path::new(path)).map_err(|e| Error::Io {
        path: path.to_string(),
        message: format!(
            "cannot read genotype file ({e}); it is not a built-in name either (built-in: {})",
            names.join(", ")
        ),
    })?;
    parse(&text).map_err(|e| Error::Format {
        path: path.to_string(),
        message: e.to_string(),
    })
}

/// A CNN genotype from a built-in name (see [`builtin`]) or from the path of a JSON file in the
/// [`Genotype`] format (validated).
pub fn load_genotype(name_or_path: &str) -> Result<Genotype> {
    builtin(name_or_path)
        .or_else(|_| load_file(name_or_path, &builtin_names(), Genotype::from_json))
}

/// A recurrent genotype from a built-in name (see [`builtin_rnn`]) or from the path of a JSON
/// file in the [`RnnGenotype`] format (validated).
pub fn load_rnn_genotype(name_or_path: &str) -> Result<RnnGenotype> {
    builtin_rnn(name_or_path)
        .or_else(|_| load_file(name_or_path, &builtin_rnn_names(), RnnGenotype::from_json))
}
