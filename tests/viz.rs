//! Genotype pictures: the DOT text (nodes, edges, labels, the original's attributes) and the
//! files a plot writes, rendered when Graphviz is installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use darts::darts::genotype::{builtin, builtin_rnn};
use darts::viz::{
    DOT_MISSING, cell_dot, plot_genotype, plot_rnn_genotype, rnn_cell_dot, write_graphs,
};

/// An edge of the DOT text: (from, to, label if any).
type Edge = (String, String, Option<String>);

/// The edges of DOT text written by `darts::viz`, read back with a small parser of the
/// `"a" -> "b" [label="op" fillcolor=gray]` lines.
fn edges(dot: &str) -> Vec<Edge> {
    dot.lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| {
            let quoted: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
            assert!(l.trim_end().ends_with("fillcolor=gray]"), "{l}");
            let label = l.contains("label=").then(|| quoted[2].to_string());
            (quoted[0].to_string(), quoted[1].to_string(), label)
        })
        .collect()
}

fn edge(from: &str, to: &str, label: Option<&str>) -> Edge {
    (from.to_string(), to.to_string(), label.map(str::to_string))
}

/// `name [fillcolor=color]` node lines of DOT text.
fn nodes(dot: &str) -> Vec<(String, String)> {
    dot.lines()
        .filter(|l| !l.contains(" -> ") && l.contains("[fillcolor="))
        .map(|l| {
            let name = l.split('"').nth(1).unwrap().to_string();
            let color = l
                .split("fillcolor=")
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string();
            (name, color)
        })
        .collect()
}

fn assert_original_style(dot: &str) {
    assert!(dot.starts_with("digraph {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    assert!(dot.contains("\tgraph [rankdir=LR]\n"), "{dot}");
    assert!(
        dot.contains("\tnode [align=center fontname=times fontsize=20 height=0.5 penwidth=2 shape=rect style=filled width=0.5]\n"),
        "{dot}"
    );
    assert!(
        dot.contains("\tedge [fontname=times fontsize=20]\n"),
        "{dot}"
    );
}

#[test]
fn darts_v2_normal_cell_dot() {
    let g = builtin("DARTS_V2").unwrap();
    let dot = cell_dot(&g.normal, &g.normal_concat);
    assert_original_style(&dot);
    let n = |s: &str, c: &str| (s.to_string(), c.to_string());
    assert_eq!(
        nodes(&dot),
        [
            n("c_{k-2}", "darkseagreen2"),
            n("c_{k-1}", "darkseagreen2"),
            n("0", "lightblue"),
            n("1", "lightblue"),
            n("2", "lightblue"),
            n("3", "lightblue"),
            n("c_{k}", "palegoldenrod"),
        ]
    );
    let got = edges(&dot);
    assert_eq!(got.len(), 8 + 4, "{dot}");
    let expected = [
        edge("c_{k-2}", "0", Some("sep_conv_3x3")),
        edge("c_{k-1}", "0", Some("sep_conv_3x3")),
        edge("c_{k-2}", "1", Some("sep_conv_3x3")),
        edge("c_{k-1}", "1", Some("sep_conv_3x3")),
        edge("c_{k-1}", "2", Some("sep_conv_3x3")),
        edge("c_{k-2}", "2", Some("skip_connect")),
        edge("c_{k-2}", "3", Some("skip_connect")),
        edge("0", "3", Some("dil_conv_3x3")),
        edge("0", "c_{k}", None),
        edge("1", "c_{k}", None),
        edge("2", "c_{k}", None),
        edge("3", "c_{k}", None),
    ];
    assert_eq!(got, expected, "{dot}");
}

#[test]
fn output_edges_follow_the_concat_list() {
    let nasnet = builtin("NASNet").unwrap();
    let dot = cell_dot(&nasnet.reduce, &nasnet.reduce_concat);
    let into_output: BTreeSet<String> = edges(&dot)
        .into_iter()
        .filter(|e| e.1 == "c_{k}")
        .map(|e| e.0)
        .collect();
    // States 4, 5, 6 are nodes 2, 3, 4.
    assert_eq!(into_output, ["2", "3", "4"].map(String::from).into());
    assert_eq!(nodes(&dot).iter().filter(|n| n.1 == "lightblue").count(), 5);
    assert!(
        edges(&dot).contains(&edge("1", "3", Some("skip_connect"))),
        "{dot}"
    );
}

#[test]
fn rnn_cell_dot_draws_the_recurrent_cell() {
    let g = builtin_rnn("DARTS_V2").unwrap();
    let dot = rnn_cell_dot(&g.recurrent, &g.concat);
    assert_original_style(&dot);
    let got = edges(&dot);
    assert_eq!(got.len(), 2 + 8 + 8, "{dot}");
    assert_eq!(got[0], edge("x_{t}", "0", None));
    assert_eq!(got[1], edge("h_{t-1}", "0", None));
    assert_eq!(got[2], edge("0", "1", Some("sigmoid")));
    assert_eq!(got[7], edge("5", "6", Some("sigmoid")));
    assert_eq!(got[9], edge("5", "8", Some("relu")));
    assert_eq!(got[10], edge("1", "h_{t}", None));
    assert_eq!(got[17], edge("8", "h_{t}", None));
    let colors: Vec<String> = nodes(&dot).into_iter().map(|n| n.1).collect();
    assert_eq!(colors.iter().filter(|c| *c == "darkseagreen2").count(), 2);
    assert_eq!(colors.iter().filter(|c| *c == "lightblue").count(), 9);
    assert_eq!(colors.last().unwrap(), "palegoldenrod");
}

#[test]
fn dot_strings_are_quoted() {
    let dot = cell_dot(&[("a\"b\\c".to_string(), 0), ("x".to_string(), 1)], &[2]);
    assert!(dot.contains(r#"[label="a\"b\\c" fillcolor=gray]"#), "{dot}");
}

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("darts-viz-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dot_installed() -> bool {
    Command::new("dot").arg("-V").output().is_ok()
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Checks a rendering: PNG magic bytes, or SVG text showing the output node `output`.
fn assert_rendered(path: &Path, output: &str) {
    let bytes = std::fs::read(path).unwrap();
    match path.extension().unwrap().to_str().unwrap() {
        "png" => assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{}",
            path.display()
        ),
        "svg" => {
            let text = String::from_utf8(bytes).unwrap();
            assert!(
                text.contains("<svg") && text.contains(output),
                "{}",
                path.display()
            );
        }
        other => panic!("unexpected rendering {other}"),
    }
}

#[test]
fn plot_writes_dot_files_and_renders_when_dot_exists() {
    let dir = TempDir::new("plot");
    let g = builtin("DARTS_V2").unwrap();
    let out = plot_genotype(&g, &dir.0).unwrap();
    assert_eq!(
        out.dot_files,
        [dir.0.join("normal.dot"), dir.0.join("reduction.dot")]
    );
    assert_eq!(
        std::fs::read_to_string(&out.dot_files[0]).unwrap(),
        cell_dot(&g.normal, &g.normal_concat)
    );
    assert_eq!(
        std::fs::read_to_string(&out.dot_files[1]).unwrap(),
        cell_dot(&g.reduce, &g.reduce_concat)
    );
    let mut expected: BTreeSet<String> = ["normal.dot", "reduction.dot"].map(String::from).into();
    if dot_installed() {
        assert!(!out.dot_missing && out.message().is_none());
        assert_eq!(out.rendered.len(), 4);
        for path in &out.rendered {
            assert_rendered(path, "c_{k}");
        }
        expected.extend(
            ["normal.svg", "normal.png", "reduction.svg", "reduction.png"].map(String::from),
        );
    } else {
        assert!(out.dot_missing && out.rendered.is_empty());
        assert_eq!(out.message(), Some(DOT_MISSING));
    }
    // Nothing else in the folder: the temporary files of the atomic writes are gone.
    assert_eq!(file_names(&dir.0), expected);

    let rnn_dir = TempDir::new("plot-rnn");
    let out = plot_rnn_genotype(&builtin_rnn("ENAS").unwrap(), &rnn_dir.0).unwrap();
    assert_eq!(out.dot_files, [rnn_dir.0.join("recurrent.dot")]);
    assert_eq!(out.rendered.len(), if dot_installed() { 2 } else { 0 });
    for path in &out.rendered {
        assert_rendered(path, "h_{t}");
    }
}

#[test]
fn missing_dot_is_reported_not_an_error() {
    let dir = TempDir::new("missing");
    let graphs = [("cell", "digraph { a -> b }\n".to_string())];
    let out = write_graphs(&dir.0, &graphs, "darts-test-no-such-graphviz-program").unwrap();
    assert!(out.dot_missing && out.rendered.is_empty());
    assert_eq!(out.message(), Some(DOT_MISSING));
    assert!(
        DOT_MISSING.contains("Graphviz `dot` not found")
            && DOT_MISSING.contains("apt-get install graphviz")
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("cell.dot")).unwrap(),
        graphs[0].1
    );
}

#[test]
fn failing_dot_is_an_error_with_its_stderr() {
    let dir = TempDir::new("failing");
    // `false` exits with status 1 and no output.
    let err = write_graphs(&dir.0, &[("cell", "digraph {}\n".to_string())], "false")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cell.dot") && err.contains("failed"), "{err}");
    if dot_installed() {
        let err = write_graphs(&dir.0, &[("broken", "digraph { -> }\n".to_string())], "dot")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.dot") && err.contains("syntax error"),
            "{err}"
        );
    }
}

#[test]
fn invalid_genotypes_are_not_plotted() {
    let dir = TempDir::new("invalid");
    let mut g = builtin("DARTS_V1").unwrap();
    g.normal[1].1 = 9;
    let err = plot_genotype(&g, &dir.0).unwrap_err().to_string();
    assert!(err.contains("reads state 9"), "{err}");
    assert!(!dir.0.exists());
}
