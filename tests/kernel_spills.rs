//! No kernel spills registers to local memory: ptxas's report of every kernel, assembled for
//! sm_90 at build time (`Family::ptxas_report`, printed by `tools/kernel-report.sh`), says
//! `0 bytes spill stores, 0 bytes spill loads`. A spill turns register traffic into memory
//! traffic in the hottest loops (the GEMM, the convolutions, batch norm, the mixed op), so a
//! change that causes one should be seen when it is made, not on the next GPU. Skipped, with a
//! printed line, in a build without nvcc.

use std::collections::{BTreeMap, BTreeSet};

use darts::device::gpu::{Family, HAS_PTX, KernelId};

/// Spill stores and loads in bytes, per function (every kernel, and any device function ptxas
/// kept out of line, such as the accurate `pow`), from one family's ptxas report.
fn spills(report: &str) -> BTreeMap<String, (u64, u64)> {
    let mut functions = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in report.lines() {
        if let Some((_, name)) = line.split_once("Function properties for ") {
            current = Some(name.trim().to_string());
        } else if line.contains("bytes spill stores") {
            let numbers: Vec<u64> = line
                .split(',')
                .filter(|part| part.contains("spill"))
                .map(|part| {
                    let count = part.split_whitespace().next().unwrap_or_default();
                    count
                        .parse()
                        .unwrap_or_else(|_| panic!("an unreadable spill count in `{line}`"))
                })
                .collect();
            let name = current
                .take()
                .unwrap_or_else(|| panic!("`{line}` follows no function"));
            assert_eq!(numbers.len(), 2, "`{line}`: expected stores and loads");
            functions.insert(name, (numbers[0], numbers[1]));
        }
    }
    functions
}

#[test]
fn no_kernel_spills_registers() {
    if !HAS_PTX {
        println!("skipped no_kernel_spills_registers: this build has no PTX (nvcc not found)");
        return;
    }
    let mut spilling = Vec::new();
    for family in Family::ALL {
        let found = spills(family.ptxas_report());
        let expected: BTreeSet<&str> = KernelId::ALL
            .iter()
            .filter(|k| k.family() == *family)
            .map(|k| k.name())
            .collect();
        let reported: BTreeSet<&str> = found.keys().map(String::as_str).collect();
        assert!(
            expected.is_subset(&reported),
            "ptxas's report of {} lacks the kernels {:?}",
            family.name(),
            expected.difference(&reported).collect::<Vec<_>>()
        );
        spilling.extend(
            found
                .into_iter()
                .filter(|(_, (stores, loads))| stores + loads > 0)
                .map(|(name, (stores, loads))| {
                    format!("{name}: {stores} bytes of spill stores, {loads} of loads")
                }),
        );
    }
    assert!(spilling.is_empty(), "kernels that spill: {spilling:#?}");
}

#[test]
fn the_report_parser_reads_spills() {
    let report = "ptxas info    : Function properties for helper\n    \
                  8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
                  ptxas info    : Compiling entry function 'a_fwd_f32' for 'sm_90'\n\
                  ptxas info    : Function properties for a_fwd_f32\n    \
                  0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                  ptxas info    : Compiling entry function 'b_bwd_f32' for 'sm_90'\n\
                  ptxas info    : Function properties for b_bwd_f32\n    \
                  48 bytes stack frame, 44 bytes spill stores, 40 bytes spill loads\n";
    let found = spills(report);
    assert_eq!(found["helper"], (4, 4));
    assert_eq!(found["a_fwd_f32"], (0, 0));
    assert_eq!(found["b_bwd_f32"], (44, 40));
    assert_eq!(found.len(), 3);
}
