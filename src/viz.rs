//! Genotype pictures: Graphviz DOT text in the style of the original `visualize.py` (left to
//! right, filled boxes in Times 20: inputs darkseagreen2, intermediate nodes lightblue, the output
//! palegoldenrod, edges labelled with their op), written to `.dot` files and rendered to SVG and
//! PNG with the `dot` program when it is installed.
//!
//! One deliberate difference: the output node gets edges from the states in the cell's concat
//! list, where the original draws them from every intermediate node. The two agree for every
//! DARTS genotype (whose concat lists name all intermediate nodes); for NASNet, AmoebaNet and
//! ENAS the picture then shows the cell as it is actually computed.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::darts::genotype::{CellEntry, Genotype, RnnGenotype};
use crate::io::write_atomically;
use crate::{Error, Result};

/// What [`PlotOutput::message`] says when Graphviz is missing.
pub const DOT_MISSING: &str = "Graphviz `dot` not found; install graphviz (apt-get install graphviz) to render SVG/PNG; the .dot files are written";

/// The image formats rendered next to each `.dot` file.
const FORMATS: [&str; 2] = ["svg", "png"];

/// The files a plot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotOutput {
    /// The Graphviz sources, always written.
    pub dot_files: Vec<PathBuf>,
    /// The rendered SVG and PNG files (empty when `dot` is missing).
    pub rendered: Vec<PathBuf>,
    /// True when the `dot` program could not be found, so nothing was rendered.
    pub dot_missing: bool,
}

impl PlotOutput {
    /// The note to show the user when rendering was skipped ([`DOT_MISSING`]), if it was.
    pub fn message(&self) -> Option<&'static str> {
        self.dot_missing.then_some(DOT_MISSING)
    }
}

/// A DOT string literal: quoted, with quotes and backslashes escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A DOT graph under construction, with the original's graph, node and edge attributes.
struct Dot(String);

impl Dot {
    fn new() -> Dot {
        Dot(concat!(
            "digraph {\n",
            "\tgraph [rankdir=LR]\n",
            "\tnode [align=center fontname=times fontsize=20 height=0.5 penwidth=2 shape=rect style=filled width=0.5]\n",
            "\tedge [fontname=times fontsize=20]\n",
        )
        .to_string())
    }

    fn node(&mut self, name: &str, fillcolor: &str) {
        self.0 += &format!("\t{} [fillcolor={fillcolor}]\n", quote(name));
    }

    fn edge(&mut self, from: &str, to: &str, label: Option<&str>) {
        let label = label.map_or(String::new(), |l| format!("label={} ", quote(l)));
        self.0 += &format!(
            "\t{} -> {} [{label}fillcolor=gray]\n",
            quote(from),
            quote(to)
        );
    }

    fn finish(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

/// Name of CNN cell state `s` in the pictures: c_{k-2}, c_{k-1}, then the nodes 0, 1, ...
fn cnn_state(s: usize) -> String {
    match s {
        0 => "c_{k-2}".to_string(),
        1 => "c_{k-1}".to_string(),
        s => (s - 2).to_string(),
    }
}

/// DOT text of one CNN cell (`cell`: two `(op, input)` entries per node, as in [`Genotype`]):
/// inputs c_{k-2}, c_{k-1}; nodes 0, 1, ...; one labelled edge per entry; output c_{k} fed by
/// the `concat` states. Validate the genotype first: the text mirrors whatever it is given.
pub fn cell_dot(cell: &[CellEntry], concat: &[usize]) -> String {
    let mut g = Dot::new();
    g.node("c_{k-2}", "darkseagreen2");
    g.node("c_{k-1}", "darkseagreen2");
    let steps = cell.len().div_ceil(2);
    for i in 0..steps {
        g.node(&i.to_string(), "lightblue");
    }
    for (e, (op, j)) in cell.iter().enumerate() {
        g.edge(&cnn_state(*j), &(e / 2).to_string(), Some(op));
    }
    g.node("c_{k}", "palegoldenrod");
    for &s in concat {
        g.edge(&cnn_state(s), "c_{k}", None);
    }
    g.finish()
}

/// DOT text of a recurrent cell (`recurrent`: entry `i` feeds node `i + 1`, as in
/// [`RnnGenotype`]): inputs x_{t}, h_{t-1} feeding node 0 (the init state); nodes 1, 2, ...;
/// one edge per entry labelled with its activation; output h_{t} fed by the `concat` states.
pub fn rnn_cell_dot(recurrent: &[CellEntry], concat: &[usize]) -> String {
    let mut g = Dot::new();
    g.node("x_{t}", "darkseagreen2");
    g.node("h_{t-1}", "darkseagreen2");
    g.node("0", "lightblue");
    g.edge("x_{t}", "0", None);
    g.edge("h_{t-1}", "0", None);
    for i in 1..=recurrent.len() {
        g.node(&i.to_string(), "lightblue");
    }
    for (i, (op, j)) in recurrent.iter().enumerate() {
        g.edge(&j.to_string(), &(i + 1).to_string(), Some(op));
    }
    g.node("h_{t}", "palegoldenrod");
    for &s in concat {
        g.edge(&s.to_string(), "h_{t}", None);
    }
    g.finish()
}

/// Validates `genotype` and draws both cells into `out_dir` (created if needed): `normal.dot` and
/// `reduction.dot`, plus `.svg` and `.png` renderings when Graphviz `dot` is on the PATH.
pub fn plot_genotype(genotype: &Genotype, out_dir: &Path) -> Result<PlotOutput> {
    genotype.validate()?;
    let graphs = [
        (
            "normal",
            cell_dot(&genotype.normal, &genotype.normal_concat),
        ),
        (
            "reduction",
            cell_dot(&genotype.reduce, &genotype.reduce_concat),
        ),
    ];
    write_graphs(out_dir, &graphs, "dot")
}

/// Validates `genotype` and draws its cell into `out_dir` as `recurrent.dot` (plus `.svg` and
/// `.png` when Graphviz `dot` is on the PATH).
pub fn plot_rnn_genotype(genotype: &RnnGenotype, out_dir: &Path) -> Result<PlotOutput> {
    genotype.validate()?;
    let graphs = [(
        "recurrent",
        rnn_cell_dot(&genotype.recurrent, &genotype.concat),
    )];
    write_graphs(out_dir, &graphs, "dot")
}

/// Writes each `(stem, dot text)` to `out_dir/stem.dot` (atomically: temporary file, then
/// rename) and renders it with the Graphviz program `dot_program` (a name looked up on the PATH,
/// or a path) to `stem.svg` and `stem.png`. A missing program is not an error: the output says
/// so. A program that fails is an error carrying its exit status and stderr.
pub fn write_graphs(
    out_dir: &Path,
    graphs: &[(&str, String)],
    dot_program: &str,
) -> Result<PlotOutput> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::Io {
        path: out_dir.display().to_string(),
        message: format!("cannot create the output folder: {e}"),
    })?;
    let mut out = PlotOutput {
        dot_files: Vec::new(),
        rendered: Vec::new(),
        dot_missing: false,
    };
    for (stem, text) in graphs {
        let dot_file = out_dir.join(format!("{stem}.dot"));
        write_atomically(&dot_file, text.as_bytes())?;
        out.dot_files.push(dot_file);
    }
    for dot_file in &out.dot_files {
        for format in FORMATS {
            let image = dot_file.with_extension(format);
            match render(dot_program, dot_file, format)? {
                Some(bytes) => write_atomically(&image, &bytes)?,
                None => {
                    out.dot_missing = true;
                    return Ok(out);
                }
            }
            out.rendered.push(image);
        }
    }
    Ok(out)
}

/// Runs `dot_program -T<format> dot_file` and returns its stdout, or `None` when the program
/// does not exist.
fn render(dot_program: &str, dot_file: &Path, format: &str) -> Result<Option<Vec<u8>>> {
    let failed = |message: String| Error::Io {
        path: dot_file.display().to_string(),
        message,
    };
    let output = match Command::new(dot_program)
        .arg(format!("-T{format}"))
        .arg(dot_file)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(format!("cannot run `{dot_program}`: {e}"))),
    };
    if !output.status.success() {
        return Err(failed(format!(
            "`{dot_program} -T{format}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(Some(output.stdout))
}
