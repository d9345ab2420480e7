//! Every kernel the build found in `kernels/*.cu` must be launched by a test.
//!
//! Each `tests/kernels_<family>.rs` declares `const COVERED: &[KernelId] = &[...]` and, through
//! `cpu_reference_tests!(check_against_cpu, COVERED)` of `tests/common/gpu.rs`, checks at run time
//! with `TestExecutor::launched()` that it launched exactly those kernels. This test
//! reads those lists from the source files and compares them with `KernelId::ALL`, which
//! `build.rs` generates from the kernels themselves: a new kernel without a test fails here, and a
//! list that names kernels its test no longer launches fails there. With PTX in the build, it also
//! checks that each family's PTX has exactly one `.entry` per kernel.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use darts::device::gpu::{Family, HAS_PTX, KernelId};

/// The kernel names (as `KernelId` variants) listed in `const COVERED` of one test file.
fn covered_list(path: &Path, source: &str) -> Vec<String> {
    let start = source
        .find("const COVERED: &[KernelId] = &[")
        .unwrap_or_else(|| {
            panic!(
                "{}: no `const COVERED: &[KernelId] = &[...]`",
                path.display()
            )
        });
    let list = &source[start..];
    let list = &list[..list.find("];").expect("the COVERED list ends with `];`")];
    list.split("KernelId::")
        .skip(1) // the declaration before the first entry
        .map(|entry| {
            entry
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_kernel_is_launched_by_a_test() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let all: BTreeSet<String> = KernelId::ALL.iter().map(|k| format!("{k:?}")).collect();
    let mut covered = BTreeSet::new();
    for family in Family::ALL {
        let path = tests.join(format!("kernels_{}.rs", family.name()));
        let source = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; every kernel family needs this test file (see tests/kernels_elementwise.rs)",
                path.display()
            )
        });
        // rustfmt may spread the macro's arguments over lines.
        let compact: String = source.split_whitespace().collect();
        assert!(
            compact.contains("cpu_reference_tests!(check_against_cpu,COVERED"),
            "{}: must check its COVERED list against TestExecutor::launched() with \
             `cpu_reference_tests!(check_against_cpu, COVERED)`",
            path.display()
        );
        for name in covered_list(&path, &source) {
            let kernel = KernelId::ALL.iter().find(|k| format!("{k:?}") == name);
            match kernel {
                Some(k) => assert_eq!(
                    k.family(),
                    *family,
                    "{}: lists {name}, a kernel of another family",
                    path.display()
                ),
                None => panic!("{}: lists {name}, which is not a kernel", path.display()),
            }
            covered.insert(name);
        }
    }
    let missing: Vec<String> = KernelId::ALL
        .iter()
        .filter(|k| !covered.contains(&format!("{k:?}")))
        .map(|k| {
            format!(
                "{} ({}; list it in tests/kernels_{}.rs)",
                k.name(),
                k.location(),
                k.family().name()
            )
        })
        .collect();
    assert!(missing.is_empty(), "kernels no test launches: {missing:#?}");
    assert_eq!(covered, all);
}

#[test]
fn ptx_has_one_entry_per_kernel() {
    if !HAS_PTX {
        println!("skipped ptx_has_one_entry_per_kernel: this build has no PTX (nvcc not found)");
        return;
    }
    for family in Family::ALL {
        let entries: BTreeSet<&str> = family
            .ptx()
            .lines()
            .filter_map(|line| line.split_once(".entry ").map(|(_, rest)| rest))
            .map(|rest| rest.split('(').next().unwrap_or(rest).trim())
            .collect();
        let kernels: BTreeSet<&str> = KernelId::ALL
            .iter()
            .filter(|k| k.family() == *family)
            .map(|k| k.name())
            .collect();
        assert_eq!(
            entries,
            kernels,
            "the .entry points of {}.ptx",
            family.name()
        );
    }
}
