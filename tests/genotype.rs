//! Genotypes: the decoding rule on hand-made and random α, the published genotypes against the
//! specification's tables, JSON, validation and loading.

use darts::Rng;
use darts::darts::genotype::{
    EXTRA_OPS, Genotype, PRIMITIVES, RNN_PRIMITIVES, RnnGenotype, alpha_table, builtin,
    builtin_names, builtin_rnn, builtin_rnn_names, derive_genotype, derive_rnn_genotype,
    load_genotype, load_rnn_genotype, rnn_alpha_table, softmax_rows,
};

fn cell(entries: &[(&str, usize)]) -> Vec<(String, usize)> {
    entries.iter().map(|&(op, j)| (op.to_string(), j)).collect()
}

/// A row of `cols` logits, zero except at the given columns.
fn row(cols: usize, set: &[(usize, f32)]) -> Vec<f32> {
    let mut r = vec![0.0; cols];
    for &(k, v) in set {
        r[k] = v;
    }
    r
}

fn col(name: &str) -> usize {
    PRIMITIVES.iter().position(|&p| p == name).unwrap()
}

fn rnn_col(name: &str) -> usize {
    RNN_PRIMITIVES.iter().position(|&p| p == name).unwrap()
}

/// Normal-cell α built to exercise every clause of the rule (expected result in the test).
fn tricky_normal() -> Vec<f32> {
    let r = |set: &[(&str, f32)]| {
        row(
            8,
            &set.iter().map(|&(n, v)| (col(n), v)).collect::<Vec<_>>(),
        )
    };
    [
        // node 0: row 0 is dominated by `none` (weak edge; its op must not be `none`).
        r(&[("none", 10.0), ("sep_conv_3x3", 1.0)]),
        r(&[("dil_conv_5x5", 0.5)]),
        // node 1: rows 3 and 4 tie for second place: the lower predecessor wins.
        r(&[("sep_conv_5x5", 3.0)]),
        r(&[("skip_connect", 1.0)]),
        r(&[("skip_connect", 1.0)]),
        // node 2: `none`-dominated row 5 is dropped; row 7 has two equal ops (first wins).
        r(&[("none", 8.0)]),
        r(&[]),
        r(&[("max_pool_3x3", 2.0), ("sep_conv_3x3", 2.0)]),
        r(&[("dil_conv_3x3", 4.0)]),
        // node 3: raw α would rank row 9 first (2.0) and, with `none`, row 11 (3.0); softmax
        // weights without `none` rank row 10, then row 13.
        r(&[
            ("max_pool_3x3", 2.0),
            ("avg_pool_3x3", 2.0),
            ("skip_connect", 2.0),
            ("sep_conv_3x3", 2.0),
            ("sep_conv_5x5", 2.0),
            ("dil_conv_3x3", 2.0),
            ("dil_conv_5x5", 2.0),
        ]),
        r(&[("avg_pool_3x3", 1.5)]),
        r(&[("none", 3.0), ("sep_conv_5x5", 1.8)]),
        r(&[]),
        r(&[("skip_connect", 1.0)]),
    ]
    .concat()
}

/// Reduce-cell α whose row `r` favours op `1 + r % 7` with a logit growing with `r`, so every
/// node keeps its two latest predecessors, latest first.
fn rising_reduce() -> Vec<f32> {
    (0..14)
        .flat_map(|r| row(8, &[(1 + r % 7, 1.0 + 0.1 * r as f32)]))
        .collect()
}

#[test]
fn primitives_are_in_alpha_column_order() {
    assert_eq!(
        PRIMITIVES,
        [
            "none",
            "max_pool_3x3",
            "avg_pool_3x3",
            "skip_connect",
            "sep_conv_3x3",
            "sep_conv_5x5",
            "dil_conv_3x3",
            "dil_conv_5x5"
        ]
    );
    assert_eq!(
        RNN_PRIMITIVES,
        ["none", "tanh", "relu", "sigmoid", "identity"]
    );
    assert_eq!(EXTRA_OPS, ["sep_conv_7x7", "conv_7x1_1x7"]);
}

#[test]
fn derive_follows_the_decoding_rule() {
    let g = derive_genotype(&tricky_normal(), &rising_reduce(), 4, 4).unwrap();
    assert_eq!(
        g.normal,
        cell(&[
            ("dil_conv_5x5", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 0),
            ("skip_connect", 1),
            ("dil_conv_3x3", 3),
            ("max_pool_3x3", 2),
            ("avg_pool_3x3", 1),
            ("skip_connect", 4),
        ])
    );
    assert_eq!(
        g.reduce,
        cell(&[
            ("avg_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 1),
            ("avg_pool_3x3", 3),
            ("max_pool_3x3", 2),
            ("dil_conv_5x5", 4),
            ("dil_conv_3x3", 3),
        ])
    );
    assert_eq!(g.normal_concat, vec![2, 3, 4, 5]);
    assert_eq!(g.reduce_concat, vec![2, 3, 4, 5]);
    g.validate().unwrap();
}

#[test]
fn derive_ties_everywhere_pick_the_first() {
    // All-zero α: every edge and op ties, so each node keeps predecessors 0 and 1 with the first
    // non-`none` op, as the original's stable sort and strict `>` do.
    let zeros = vec![0.0; 14 * 8];
    let g = derive_genotype(&zeros, &zeros, 4, 4).unwrap();
    let expected: Vec<(String, usize)> = (0..8)
        .map(|e| ("max_pool_3x3".to_string(), e % 2))
        .collect();
    assert_eq!(g.normal, expected);
    assert_eq!(g.reduce, expected);
}

/// The original's decoder, transcribed literally (f64 softmax), for the random comparison.
fn reference_cnn(alphas: &[f32], steps: usize) -> Vec<(String, usize)> {
    let w: Vec<Vec<f64>> = alphas
        .chunks(8)
        .map(|r| {
            let m = r.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        })
        .collect();
    let mut gene = Vec::new();
    let (mut start, mut n) = (0, 2);
    for _ in 0..steps {
        let rows = &w[start..start + n];
        let strength = |x: usize| (1..8).map(|k| rows[x][k]).fold(f64::MIN, f64::max);
        let mut edges: Vec<usize> = (0..n).collect();
        edges.sort_by(|&a, &b| strength(b).partial_cmp(&strength(a)).unwrap());
        for &j in &edges[..2] {
            let mut best = 1;
            for k in 2..8 {
                if rows[j][k] > rows[j][best] {
                    best = k;
                }
            }
            gene.push((PRIMITIVES[best].to_string(), j));
        }
        start += n;
        n += 1;
    }
    gene
}

#[test]
fn derive_matches_a_literal_reference_on_random_alphas() {
    let mut rng = Rng::new(7);
    for (steps, multiplier) in [(4, 4), (5, 3), (1, 1), (3, 2)] {
        let edges: usize = (0..steps).map(|i| i + 2).sum();
        for scale in [1e-3, 1.0] {
            let normal: Vec<f32> = (0..edges * 8).map(|_| scale * rng.normal()).collect();
            let reduce: Vec<f32> = (0..edges * 8).map(|_| scale * rng.normal()).collect();
            let g = derive_genotype(&normal, &reduce, steps, multiplier).unwrap();
            assert_eq!(g.normal, reference_cnn(&normal, steps), "steps {steps}");
            assert_eq!(g.reduce, reference_cnn(&reduce, steps), "steps {steps}");
            let concat: Vec<usize> = (2 + steps - multiplier..2 + steps).collect();
            assert_eq!(g.normal_concat, concat);
            assert_eq!(g.reduce_concat, concat);
            g.validate().unwrap();
        }
    }
}

#[test]
fn derive_rejects_bad_sizes_and_values() {
    let good = vec![0.0; 14 * 8];
    let err = derive_genotype(&good[..13 * 8], &good, 4, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alphas_normal") && err.contains("112"),
        "{err}"
    );
    let err = derive_genotype(&good, &[0.0; 15 * 8], 4, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alphas_reduce") && err.contains("120"),
        "{err}"
    );
    assert!(
        derive_genotype(&good, &good, 5, 4).is_err(),
        "14 rows do not fit 5 steps"
    );
    assert!(derive_genotype(&good, &good, 4, 0).is_err());
    assert!(derive_genotype(&good, &good, 4, 5).is_err());
    assert!(derive_genotype(&[], &[], 0, 0).is_err());
    let mut nan = good.clone();
    nan[17] = f32::NAN;
    let err = derive_genotype(&nan, &good, 4, 4).unwrap_err().to_string();
    assert!(
        err.contains("alphas_normal[17]") && err.contains("not finite"),
        "{err}"
    );
}

#[test]
fn derive_rnn_follows_the_decoding_rule() {
    let r = |set: &[(&str, f32)]| {
        row(
            5,
            &set.iter()
                .map(|&(n, v)| (rnn_col(n), v))
                .collect::<Vec<_>>(),
        )
    };
    let alphas = [
        // node 1: only s0; `none` dominates but is never chosen.
        r(&[("none", 5.0), ("relu", 1.0)]),
        // node 2: predecessors tie (first wins), ops tie (first wins).
        r(&[("tanh", 2.0), ("sigmoid", 2.0)]),
        r(&[("tanh", 2.0), ("sigmoid", 2.0)]),
        // node 3: the `none`-dominated edge loses to the strongest non-`none` weight.
        r(&[("none", 9.0)]),
        r(&[("identity", 1.0)]),
        r(&[("sigmoid", 1.5)]),
    ]
    .concat();
    let g = derive_rnn_genotype(&alphas, 3).unwrap();
    assert_eq!(
        g.recurrent,
        cell(&[("relu", 0), ("tanh", 0), ("sigmoid", 2)])
    );
    assert_eq!(g.concat, vec![1, 2, 3]);
    g.validate().unwrap();

    let err = derive_rnn_genotype(&alphas, 8).unwrap_err().to_string();
    assert!(err.contains("180"), "{err}");
    assert!(derive_rnn_genotype(&alphas, 0).is_err());
}

#[test]
fn derive_rnn_matches_a_literal_reference_on_random_alphas() {
    let mut rng = Rng::new(11);
    let alphas: Vec<f32> = (0..36 * 5).map(|_| rng.normal()).collect();
    let w = softmax_rows(&alphas, 5).unwrap();
    let mut expected = Vec::new();
    let mut start = 0;
    for i in 0..8 {
        let strength = |x: usize| {
            (1..5)
                .map(|k| w[(start + x) * 5 + k])
                .fold(f32::MIN, f32::max)
        };
        let mut order: Vec<usize> = (0..=i).collect();
        order.sort_by(|&a, &b| strength(b).partial_cmp(&strength(a)).unwrap());
        let j = order[0];
        let best = (1..5)
            .reduce(|b, k| {
                if w[(start + j) * 5 + k] > w[(start + j) * 5 + b] {
                    k
                } else {
                    b
                }
            })
            .unwrap();
        expected.push((RNN_PRIMITIVES[best].to_string(), j));
        start += i + 1;
    }
    let g = derive_rnn_genotype(&alphas, 8).unwrap();
    assert_eq!(g.recurrent, expected);
    assert_eq!(g.concat, (1..=8).collect::<Vec<_>>());
}

#[test]
fn softmax_rows_normalises_each_row() {
    let x = [1.0, 2.0, 3.0, -1.0, 0.0, 100.0];
    let y = softmax_rows(&x, 3).unwrap();
    for (r, yr) in x.chunks(3).zip(y.chunks(3)) {
        let s: f64 = r.iter().map(|&v| (v as f64).exp()).sum();
        for (&v, &w) in r.iter().zip(yr) {
            assert!((w as f64 - (v as f64).exp() / s).abs() < 1e-6, "{w} vs {v}");
        }
    }
    assert!(softmax_rows(&x, 0).is_err());
    assert!(softmax_rows(&x, 4).is_err());
    assert!(softmax_rows(&[], 3).is_err());
}

#[test]
fn alpha_table_labels_rows_and_columns() {
    let t = alpha_table(&vec![0.0; 14 * 8], "alphas_normal (epoch 3)").unwrap();
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 2 + 14, "{t}");
    assert_eq!(lines[0], "alphas_normal (epoch 3)");
    for name in PRIMITIVES {
        assert!(lines[1].contains(name), "{t}");
    }
    assert!(lines[2].starts_with("node 0 <- c_{k-2}"), "{t}");
    assert!(lines[3].starts_with("node 0 <- c_{k-1}"), "{t}");
    assert!(lines[6].starts_with("node 1 <- 0 "), "{t}");
    assert!(lines[15].starts_with("node 3 <- 2 "), "{t}");
    assert_eq!(t.matches("0.125").count(), 14 * 8, "{t}");

    let mut one_hot = vec![0.0; 14 * 8];
    one_hot[5 * 8 + 3] = 50.0;
    let t = alpha_table(&one_hot, "x").unwrap();
    let row5 = t.lines().nth(2 + 5).unwrap();
    assert!(row5.starts_with("node 2 <- c_{k-2}"), "{t}");
    let cells: Vec<&str> = row5.split_whitespace().skip(4).collect();
    assert_eq!(
        cells,
        [
            "0.000", "0.000", "0.000", "1.000", "0.000", "0.000", "0.000", "0.000"
        ],
        "{t}"
    );

    assert!(
        alpha_table(&vec![0.0; 13 * 8], "x").is_err(),
        "13 rows are no cell"
    );
    assert!(alpha_table(&[0.0; 12], "x").is_err(), "not whole rows");

    let t = rnn_alpha_table(&vec![0.0; 36 * 5], "rnn").unwrap();
    assert_eq!(t.lines().count(), 2 + 36);
    assert!(t.lines().nth(2).unwrap().starts_with("node 1 <- 0"), "{t}");
    assert!(t.lines().last().unwrap().starts_with("node 8 <- 7"), "{t}");
    assert_eq!(t.matches("0.200").count(), 36 * 5);
}

/// A cell written node by node as in the specification's tables.
fn by_node(nodes: [[(&str, usize); 2]; 4]) -> Vec<(String, usize)> {
    cell(&nodes.concat())
}

#[test]
fn darts_builtins_match_the_published_tables() {
    let v2 = builtin("DARTS_V2").unwrap();
    assert_eq!(
        v2.normal,
        by_node([
            [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
            [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)],
            [("sep_conv_3x3", 1), ("skip_connect", 0)],
            [("skip_connect", 0), ("dil_conv_3x3", 2)],
        ])
    );
    assert_eq!(
        v2.reduce,
        by_node([
            [("max_pool_3x3", 0), ("max_pool_3x3", 1)],
            [("skip_connect", 2), ("max_pool_3x3", 1)],
            [("max_pool_3x3", 0), ("skip_connect", 2)],
            [("skip_connect", 2), ("max_pool_3x3", 1)],
        ])
    );
    let v1 = builtin("DARTS_V1").unwrap();
    assert_eq!(
        v1.normal,
        by_node([
            [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)],
            [("skip_connect", 0), ("sep_conv_3x3", 1)],
            [("skip_connect", 0), ("sep_conv_3x3", 1)],
            [("sep_conv_3x3", 0), ("skip_connect", 2)],
        ])
    );
    assert_eq!(
        v1.reduce,
        by_node([
            [("max_pool_3x3", 0), ("max_pool_3x3", 1)],
            [("skip_connect", 2), ("max_pool_3x3", 0)],
            [("max_pool_3x3", 0), ("skip_connect", 2)],
            [("skip_connect", 2), ("avg_pool_3x3", 0)],
        ])
    );
    for g in [&v1, &v2] {
        assert_eq!(g.normal_concat, vec![2, 3, 4, 5]);
        assert_eq!(g.reduce_concat, vec![2, 3, 4, 5]);
    }
    assert_eq!(builtin("DARTS").unwrap(), v2, "DARTS is DARTS_V2");
    assert_eq!(
        builtin("darts_v1").unwrap(),
        v1,
        "names are case-insensitive"
    );
}

#[test]
fn reference_builtins_are_valid_and_shaped_as_published() {
    for name in builtin_names() {
        builtin(name).unwrap().validate().unwrap();
    }
    assert_eq!(
        builtin_names(),
        ["NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2", "DARTS"]
    );
    let nasnet = builtin("NASNet").unwrap();
    assert_eq!((nasnet.normal_steps(), nasnet.reduce_steps()), (5, 5));
    assert_eq!(nasnet.normal_concat, vec![2, 3, 4, 5, 6]);
    assert_eq!(nasnet.reduce_concat, vec![4, 5, 6]);
    assert!(nasnet.reduce.iter().any(|(op, _)| op == "sep_conv_7x7"));
    let amoeba = builtin("AmoebaNet").unwrap();
    assert_eq!(amoeba.normal_concat, vec![4, 5, 6]);
    assert_eq!(amoeba.reduce_concat, vec![3, 4, 6]);
    assert!(amoeba.reduce.contains(&("conv_7x1_1x7".to_string(), 0)));
}

#[test]
fn rnn_builtins_match_the_published_cells() {
    let v2 = builtin_rnn("DARTS_V2").unwrap();
    // node1 = sigmoid(s0), node2 = relu(node1), node3 = relu(node1), node4 = identity(node1),
    // node5 = tanh(node2), node6 = sigmoid(node5), node7 = tanh(node3), node8 = relu(node5).
    assert_eq!(
        v2.recurrent,
        cell(&[
            ("sigmoid", 0),
            ("relu", 1),
            ("relu", 1),
            ("identity", 1),
            ("tanh", 2),
            ("sigmoid", 5),
            ("tanh", 3),
            ("relu", 5),
        ])
    );
    let v1 = builtin_rnn("DARTS_V1").unwrap();
    assert_eq!(
        v1.recurrent,
        cell(&[
            ("relu", 0),
            ("relu", 1),
            ("tanh", 2),
            ("relu", 3),
            ("relu", 4),
            ("identity", 1),
            ("relu", 5),
            ("relu", 1),
        ])
    );
    for g in [&v1, &v2] {
        assert_eq!(g.concat, (1..=8).collect::<Vec<_>>());
    }
    assert_eq!(builtin_rnn("DARTS").unwrap(), v2);
    let enas = builtin_rnn("ENAS").unwrap();
    assert_eq!(enas.steps(), 11);
    assert_eq!(enas.concat, vec![2, 5, 6, 9, 10, 11]);
    for name in builtin_rnn_names() {
        builtin_rnn(name).unwrap().validate().unwrap();
    }
}

#[test]
fn unknown_builtin_names_list_the_known_ones() {
    let err = builtin("DARTS_V3").unwrap_err().to_string();
    assert!(err.contains("DARTS_V3"), "{err}");
    for name in builtin_names() {
        assert!(err.contains(name), "{err}");
    }
    let err = builtin_rnn("LSTM").unwrap_err().to_string();
    assert!(
        err.contains("LSTM") && err.contains("ENAS") && err.contains("DARTS_V1"),
        "{err}"
    );
}

#[test]
fn json_round_trips_in_the_documented_form() {
    let g = builtin("DARTS_V2").unwrap();
    let value: serde_json::Value = serde_json::from_str(&g.to_json()).unwrap();
    assert_eq!(value["normal"][0], serde_json::json!(["sep_conv_3x3", 0]));
    assert_eq!(value["normal_concat"], serde_json::json!([2, 3, 4, 5]));
    assert_eq!(value["reduce"][7], serde_json::json!(["max_pool_3x3", 1]));
    assert_eq!(Genotype::from_json(&g.to_json()).unwrap(), g);
    assert_eq!(
        Genotype::from_json(&serde_json::to_string(&g).unwrap()).unwrap(),
        g
    );
    for name in builtin_names() {
        let g = builtin(name).unwrap();
        assert_eq!(Genotype::from_json(&g.to_json()).unwrap(), g, "{name}");
    }
    for name in builtin_rnn_names() {
        let g = builtin_rnn(name).unwrap();
        assert_eq!(RnnGenotype::from_json(&g.to_json()).unwrap(), g, "{name}");
    }
    let text = r#"{"recurrent": [["tanh", 0], ["relu", 1]], "concat": [1, 2]}"#;
    assert_eq!(
        RnnGenotype::from_json(text).unwrap().recurrent,
        cell(&[("tanh", 0), ("relu", 1)])
    );
    let err = Genotype::from_json(r#"{"normal": [], "extra": 1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad genotype JSON"), "{err}");
}

#[test]
fn display_matches_the_original_log_form() {
    let s = builtin("DARTS_V2").unwrap().to_string();
    assert!(
        s.starts_with("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "),
        "{s}"
    );
    assert!(
        s.contains("], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "),
        "{s}"
    );
    assert!(
        s.ends_with("('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"),
        "{s}"
    );
    let s = builtin_rnn("DARTS_V2").unwrap().to_string();
    assert!(
        s.starts_with("Genotype(recurrent=[('sigmoid', 0), ('relu', 1), "),
        "{s}"
    );
    assert!(s.ends_with("], concat=[1, 2, 3, 4, 5, 6, 7, 8])"), "{s}");
}

fn error_of(g: &Genotype) -> String {
    g.validate().unwrap_err().to_string()
}

#[test]
fn validation_names_the_problem() {
    let base = builtin("DARTS_V2").unwrap();

    let mut g = base.clone();
    g.normal[3].0 = "conv_3x3".to_string();
    let err = error_of(&g);
    assert!(
        err.contains("normal cell") && err.contains("entry 3") && err.contains("`conv_3x3`"),
        "{err}"
    );
    assert!(
        err.contains("known ops") && err.contains("sep_conv_7x7"),
        "{err}"
    );

    let mut g = base.clone();
    g.reduce[2].1 = 4; // entry 2 feeds node 1, which can read states 0..2
    let err = error_of(&g);
    assert!(
        err.contains("reduction cell") && err.contains("reads state 4") && err.contains("0 to 2"),
        "{err}"
    );

    let mut g = base.clone();
    g.normal.pop();
    let err = error_of(&g);
    assert!(
        err.contains("7 entries") && err.contains("multiple of 2"),
        "{err}"
    );

    let mut g = base.clone();
    g.normal_concat = vec![2, 6];
    let err = error_of(&g);
    assert!(err.contains("concat") && err.contains("state 6"), "{err}");

    let mut g = base.clone();
    g.reduce_concat.clear();
    assert!(error_of(&g).contains("empty"));

    let mut g = base.clone();
    g.normal.clear();
    assert!(error_of(&g).contains("no entries"));

    // The eval-only ops of NASNet/AmoebaNet are accepted.
    let mut g = base.clone();
    g.normal[0].0 = "conv_7x1_1x7".to_string();
    g.validate().unwrap();

    let mut r = builtin_rnn("DARTS_V2").unwrap();
    r.recurrent[2] = ("none".to_string(), 0);
    let err = r.validate().unwrap_err().to_string();
    assert!(
        err.contains("recurrent cell") && err.contains("`none`"),
        "{err}"
    );
    let mut r = builtin_rnn("DARTS_V2").unwrap();
    r.recurrent[2].1 = 3; // node 3 can read states 0..2
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("reads state 3")
    );
    let mut r = builtin_rnn("DARTS_V2").unwrap();
    r.concat.push(9);
    assert!(r.validate().unwrap_err().to_string().contains("state 9"));
}

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("darts-genotype-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_takes_a_name_or_a_json_file() {
    assert_eq!(
        load_genotype("DARTS").unwrap(),
        builtin("DARTS_V2").unwrap()
    );
    assert_eq!(
        load_rnn_genotype("ENAS").unwrap(),
        builtin_rnn("ENAS").unwrap()
    );

    let dir = TempDir::new("load");
    let derived = derive_genotype(&tricky_normal(), &rising_reduce(), 4, 4).unwrap();
    let path = dir.0.join("searched.json");
    std::fs::write(&path, derived.to_json()).unwrap();
    assert_eq!(load_genotype(path.to_str().unwrap()).unwrap(), derived);

    let rnn_path = dir.0.join("rnn.json");
    let rnn = builtin_rnn("DARTS_V1").unwrap();
    std::fs::write(&rnn_path, rnn.to_json()).unwrap();
    assert_eq!(load_rnn_genotype(rnn_path.to_str().unwrap()).unwrap(), rnn);

    let missing = dir.0.join("nope.json");
    let err = load_genotype(missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.json") && err.contains("DARTS_V2") && err.contains("NASNet"),
        "{err}"
    );

    let broken = dir.0.join("broken.json");
    std::fs::write(&broken, "{\"normal\": [[\"sep_conv_3x3\", 0]").unwrap();
    let err = load_genotype(broken.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.json") && err.contains("bad genotype JSON"),
        "{err}"
    );

    let invalid = dir.0.join("invalid.json");
    let mut bad = derived.clone();
    bad.reduce[0].0 = "sep_conv_9x9".to_string();
    std::fs::write(&invalid, bad.to_json()).unwrap();
    let err = load_genotype(invalid.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid.json") && err.contains("sep_conv_9x9"),
        "{err}"
    );
}
