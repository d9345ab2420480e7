//! Builds the CUDA kernels in `kernels/*.cu` twice, and generates the Rust that launches them.
//!
//! 1. **PTX** (when nvcc is found): `nvcc --ptx` per family into `OUT_DIR/<family>.ptx`, checked to
//!    be PTX ISA 9.0 at most (what driver 580 / CUDA 13.0 loads), and assembled once with
//!    `ptxas -arch=sm_90 -v` so that a kernel that does not assemble fails the build; its
//!    register/spill report goes to `OUT_DIR/<family>.ptxas.txt` (`tools/kernel-report.sh`
//!    prints it; `tests/kernel_spills.rs` fails on a spill). Sets the cfg `has_ptx`. Without
//!    nvcc: a warning, empty PTX and reports, no cfg; the crate still builds.
//! 2. **The emulator**: the same `.cu` files as host C++20 against `kernels/emu/cuda_emu.h`, plus
//!    a generated file of `extern "C" emu_launch_<kernel>` entry points, into a static library.
//! 3. **`OUT_DIR/kernels.rs`**: the PTX text and ptxas report of every family, the `KernelId`
//!    table, one typed launcher per kernel and the emulator's dispatch, all generated from the
//!    one-line kernel signatures, so that Rust and CUDA can never disagree on argument order or
//!    types.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// Environment variables this script reads (each gets a `rerun-if-env-changed`).
const ENV_VARS: [&str; 5] = ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "DARTS_CUDA_ARCH"];
/// Where `tools/install-cuda-toolchain.sh` puts nvcc, relative to the repository root.
const LOCAL_NVCC: &str = ".cuda-toolchain/pkgs/nvidia/cu13/bin/nvcc";
/// The newest PTX ISA that driver 580 (CUDA 13.0) can JIT.
const MAX_PTX_VERSION: (u32, u32) = (9, 0);
const DEFAULT_ARCH: &str = "compute_80";
const INSTALL_HINT: &str = "run tools/install-cuda-toolchain.sh (nvcc 13.0 from PyPI) or set NVCC";

fn main() {
    if let Err(message) = run() {
        for line in message.lines() {
            println!("cargo::error={line}");
        }
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rustc-check-cfg=cfg(has_ptx)");
    for var in ENV_VARS {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let families = read_families(&root)?;
    let ptx_arch = match find_nvcc(&root) {
        Some(nvcc) => {
            println!("cargo::rerun-if-changed={}", nvcc.display());
            let arch = env::var("DARTS_CUDA_ARCH").unwrap_or_else(|_| DEFAULT_ARCH.to_string());
            build_ptx(&nvcc, &arch, &root, &out, &families)?;
            println!("cargo::rustc-cfg=has_ptx");
            Some(arch_number(&arch)?)
        }
        None => {
            println!(
                "cargo::warning=nvcc not found: building without PTX, so the CUDA backend is \
                 unavailable (the emulator still runs every kernel); to build PTX, {INSTALL_HINT}"
            );
            for family in &families {
                write(&out.join(format!("{}.ptx", family.name)), "")?;
                write(&out.join(format!("{}.ptxas.txt", family.name)), "")?;
            }
            None
        }
    };
    build_emulator(&root, &out, &families)?;
    write(&out.join("kernels.rs"), &rust_bindings(&families, ptx_arch))
}

// ---- Kernel signatures --------------------------------------------------------------------------

/// One `kernels/<name>.cu` file and the kernels declared in it.
struct Family {
    name: String,
    path: PathBuf,
    kernels: Vec<Kernel>,
}

/// One `extern "C" __global__ void name(...)` declaration.
struct Kernel {
    name: String,
    params: Vec<(CType, String)>,
    /// `kernels/<family>.cu:<line>`, for messages and docs.
    location: String,
}

/// The C parameter types a kernel may take.
#[derive(Clone, Copy, PartialEq)]
enum CType {
    ConstF32Ptr,
    F32Ptr,
    ConstI32Ptr,
    I32Ptr,
    ConstU32Ptr,
    U32Ptr,
    /// A table of 64-bit words (a multi-tensor launch's buffer addresses and lengths).
    ConstU64Ptr,
    Int,
    Unsigned,
    Float,
    U64,
    /// `ConvWindow` (kernels/common.cuh), by value: the Rust `ConvWindow` of the same layout.
    ConvWindow,
}

impl CType {
    const ALL: [CType; 12] = [
        CType::ConstF32Ptr,
        CType::F32Ptr,
        CType::ConstI32Ptr,
        CType::I32Ptr,
        CType::ConstU32Ptr,
        CType::U32Ptr,
        CType::ConstU64Ptr,
        CType::Int,
        CType::Unsigned,
        CType::Float,
        CType::U64,
        CType::ConvWindow,
    ];

    /// The type as written in C (and in the generated C++).
    fn c(self) -> &'static str {
        match self {
            CType::ConstF32Ptr => "const float*",
            CType::F32Ptr => "float*",
            CType::ConstI32Ptr => "const int*",
            CType::I32Ptr => "int*",
            CType::ConstU32Ptr => "const unsigned*",
            CType::U32Ptr => "unsigned*",
            CType::ConstU64Ptr => "const unsigned long long*",
            CType::Int => "int",
            CType::Unsigned => "unsigned",
            CType::Float => "float",
            CType::U64 => "unsigned long long",
            CType::ConvWindow => "ConvWindow",
        }
    }

    /// The element type of a pointer parameter, and whether the kernel may write through it.
    fn pointee(self) -> Option<(&'static str, &'static str, bool)> {
        match self {
            CType::ConstF32Ptr => Some(("f32", "F32", false)),
            CType::F32Ptr => Some(("f32", "F32", true)),
            CType::ConstI32Ptr => Some(("i32", "I32", false)),
            CType::I32Ptr => Some(("i32", "I32", true)),
            CType::ConstU32Ptr => Some(("u32", "U32", false)),
            CType::U32Ptr => Some(("u32", "U32", true)),
            CType::ConstU64Ptr => Some(("u64", "U64", false)),
            _ => None,
        }
    }

    /// The Rust type of a by-value parameter (a scalar or a parameter struct), and its
    /// `KernelArg`/`ParamKind` variant.
    fn scalar(self) -> Option<(&'static str, &'static str)> {
        match self {
            CType::Int => Some(("i32", "I32")),
            CType::Unsigned => Some(("u32", "U32")),
            CType::Float => Some(("f32", "F32")),
            CType::U64 => Some(("u64", "U64")),
            CType::ConvWindow => Some(("ConvWindow", "ConvWindow")),
            _ => None,
        }
    }

    /// The parameter's type in a typed Rust launcher (an `Option` of a buffer when `nullable`).
    fn launcher(self, nullable: bool) -> String {
        match (self.pointee(), self.scalar()) {
            (Some((t, _, false)), _) if nullable => format!("Option<&DeviceBuffer<{t}>>"),
            (Some((t, _, true)), _) if nullable => format!("Option<&mut DeviceBuffer<{t}>>"),
            (Some((t, _, false)), _) => format!("&DeviceBuffer<{t}>"),
            (Some((t, _, true)), _) => format!("&mut DeviceBuffer<{t}>"),
            (None, Some((t, _))) => t.to_string(),
            (None, None) => unreachable!("every C type is a pointer or a scalar"),
        }
    }

    /// The parameter's type in the Rust declaration of an emulator entry point.
    fn ffi(self) -> String {
        match (self.pointee(), self.scalar()) {
            (Some((t, _, false)), _) => format!("*const {t}"),
            (Some((t, _, true)), _) => format!("*mut {t}"),
            (None, Some((t, _))) => t.to_string(),
            (None, None) => unreachable!("every C type is a pointer or a scalar"),
        }
    }
}

/// The suffix of a pointer parameter that may be null: its launcher takes an `Option`, and the
/// kernel checks for null before using it (an optional input, or an output not wanted).
const NULLABLE_SUFFIX: &str = "_or_null";

/// Whether the parameter `name` may be passed a null pointer.
fn nullable(name: &str) -> bool {
    name.ends_with(NULLABLE_SUFFIX)
}

/// Rust keywords, and the launcher's own parameter names, which a kernel parameter cannot take.
const RESERVED: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum",
    "exec", "extern", "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match",
    "mod", "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super",
    "trait", "true", "type", "unsafe", "use", "where", "while", "config", "yield",
];

/// Reads every `kernels/*.cu`, sorted by name, with its kernel signatures.
fn read_families(root: &Path) -> Result<Vec<Family>, String> {
    let dir = root.join("kernels");
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    paths.sort();
    let mut families = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !is_identifier(&name) || name.contains(|c: char| c.is_ascii_uppercase()) {
            return Err(format!(
                "{}: a family name must be a lowercase C identifier",
                path.display()
            ));
        }
        let source = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let kernels = parse_kernels(&name, &source)?;
        for k in &kernels {
            if let Some(previous) = seen.insert(k.name.clone(), k.location.clone()) {
                return Err(format!(
                    "{}: kernel `{}` is already declared at {previous}",
                    k.location, k.name
                ));
            }
        }
        families.push(Family {
            name,
            path,
            kernels,
        });
    }
    Ok(families)
}

/// Finds the kernel declarations in one family's source: every line that mentions `__global__`
/// outside a comment must be a one-line declaration of the documented form.
fn parse_kernels(family: &str, source: &str) -> Result<Vec<Kernel>, String> {
    let mut kernels = Vec::new();
    let mut in_block_comment = false;
    for (index, raw) in source.lines().enumerate() {
        let location = format!("kernels/{family}.cu:{}", index + 1);
        let code = strip_comments(raw, &mut in_block_comment);
        if !code.contains("__global__") {
            continue;
        }
        let kernel = parse_signature(family, code.trim(), &location).map_err(|why| {
            format!(
                "{location}: {why}\n  the line: {}\n  a kernel is declared on one line as \
                 `extern \"C\" __global__ void {family}_<op>_<dir>_<dtype>(T a, T b, ...)` with \
                 T one of: {}",
                raw.trim(),
                CType::ALL.map(CType::c).join(", ")
            )
        })?;
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// The code part of one line (without `//` and `/* */` comments).
fn strip_comments(line: &str, in_block_comment: &mut bool) -> String {
    let mut code = String::new();
    let mut rest = line;
    loop {
        if *in_block_comment {
            match rest.find("*/") {
                Some(end) => {
                    rest = &rest[end + 2..];
                    *in_block_comment = false;
                }
                None => return code,
            }
        }
        let line_comment = rest.find("//");
        let block_comment = rest.find("/*");
        match (line_comment, block_comment) {
            (Some(l), Some(b)) if b < l => {
                code.push_str(&rest[..b]);
                rest = &rest[b + 2..];
                *in_block_comment = true;
            }
            (None, Some(b)) => {
                code.push_str(&rest[..b]);
                rest = &rest[b + 2..];
                *in_block_comment = true;
            }
            (Some(l), _) => {
                code.push_str(&rest[..l]);
                return code;
            }
            (None, None) => {
                code.push_str(rest);
                return code;
            }
        }
    }
}

fn parse_signature(family: &str, line: &str, location: &str) -> Result<Kernel, String> {
    const PREFIX: &str = "extern \"C\" __global__ void ";
    let rest = line
        .strip_prefix(PREFIX)
        .ok_or("expected the line to start with `extern \"C\" __global__ void `")?;
    // An optional `__launch_bounds__(threads, blocks)` before the name (nvcc's register budget).
    let rest = match rest.strip_prefix("__launch_bounds__(") {
        Some(bounds) => {
            let end = bounds.find(')').ok_or("an unclosed `__launch_bounds__(`")?;
            bounds[end + 1..].trim_start()
        }
        None => rest,
    };
    let open = rest.find('(').ok_or("no `(` on the line")?;
    let close = rest
        .rfind(')')
        .ok_or("no `)` on the line: the signature must fit on one line")?;
    let after = rest[close + 1..].trim();
    if !(after.is_empty() || after.starts_with('{')) {
        return Err(format!("unexpected `{after}` after the parameter list"));
    }
    let name = rest[..open].trim();
    if !is_identifier(name) {
        return Err(format!("`{name}` is not a kernel name"));
    }
    if !name.starts_with(&format!("{family}_")) {
        return Err(format!(
            "kernel `{name}` must start with its family, `{family}_`"
        ));
    }
    let mut params = Vec::new();
    let list = rest[open + 1..close].trim();
    if list.is_empty() || list == "void" {
        return Err("a kernel without parameters does nothing useful".into());
    }
    for param in list.split(',') {
        let (ty, param_name) = parse_param(param)?;
        if RESERVED.contains(&param_name.as_str()) {
            return Err(format!(
                "parameter `{param_name}` is a Rust keyword or a launcher parameter; rename it"
            ));
        }
        if nullable(&param_name) && ty.pointee().is_none() {
            return Err(format!(
                "parameter `{param_name}`: only a pointer may end in `{NULLABLE_SUFFIX}`"
            ));
        }
        if params.iter().any(|(_, p)| *p == param_name) {
            return Err(format!("parameter `{param_name}` appears twice"));
        }
        params.push((ty, param_name));
    }
    Ok(Kernel {
        name: name.to_string(),
        params,
        location: location.to_string(),
    })
}

/// One `T name` parameter. `__restrict__` may follow the `*`: it changes nothing in the ABI.
fn parse_param(param: &str) -> Result<(CType, String), String> {
    let spaced = param.replace('*', " * ");
    let mut tokens: Vec<&str> = spaced
        .split_whitespace()
        .filter(|t| *t != "__restrict__")
        .collect();
    let name = tokens
        .pop()
        .filter(|n| is_identifier(n))
        .ok_or_else(|| format!("parameter `{}` has no name", param.trim()))?;
    let ty = tokens.join(" ").replace(" *", "*");
    CType::ALL
        .into_iter()
        .find(|t| t.c() == ty)
        .map(|t| (t, name.to_string()))
        .ok_or_else(|| format!("parameter `{}` has unsupported type `{ty}`", param.trim()))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `elementwise_relu_fwd_f32` -> `ElementwiseReluFwdF32`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().unwrap().to_ascii_uppercase();
            std::iter::once(first).chain(chars).collect::<String>()
        })
        .collect()
}

// ---- PTX ----------------------------------------------------------------------------------------

/// nvcc: `NVCC` (which wins even when it names nothing, to build without PTX on purpose), then
/// `CUDA_HOME`/`CUDA_PATH`, then `PATH`, then the repository's own toolchain.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(nvcc) = env::var_os("NVCC") {
        let nvcc = PathBuf::from(nvcc);
        if nvcc.is_file() {
            return Some(nvcc);
        }
        println!(
            "cargo::warning=NVCC={} is not a file: building without PTX",
            nvcc.display()
        );
        return None;
    }
    let from_home = ["CUDA_HOME", "CUDA_PATH"]
        .into_iter()
        .filter_map(env::var_os)
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"));
    let from_path = env::var_os("PATH")
        .map(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join("nvcc"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_home
        .chain(from_path)
        .chain(std::iter::once(root.join(LOCAL_NVCC)))
        .find(|p| p.is_file())
}

/// Compiles every family to PTX and assembles it, one thread per family.
fn build_ptx(
    nvcc: &Path,
    arch: &str,
    root: &Path,
    out: &Path,
    families: &[Family],
) -> Result<(), String> {
    let ptxas_arch = ptxas_arch(arch)?;
    // ptxas sits beside nvcc, or beside the file a symlinked nvcc points to.
    let ptxas = [Some(nvcc.to_path_buf()), fs::canonicalize(nvcc).ok()]
        .into_iter()
        .flatten()
        .map(|n| n.with_file_name("ptxas"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no ptxas beside {}", nvcc.display()))?;
    std::thread::scope(|scope| {
        let jobs: Vec<_> = families
            .iter()
            .map(|f| scope.spawn(|| compile_family(nvcc, &ptxas, arch, &ptxas_arch, root, out, f)))
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join()
                    .unwrap_or_else(|_| Err("an nvcc job panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    })?;
    Ok(())
}

/// `ptxas` assembles for sm_90 (the GPU we check on), or for the target itself when it is newer.
fn ptxas_arch(arch: &str) -> Result<String, String> {
    Ok(if arch_number(arch)? < 90 {
        "sm_90".to_string()
    } else {
        format!("sm_{}", arch_suffix(arch)?)
    })
}

/// What follows `compute_` or `sm_` in a `DARTS_CUDA_ARCH` (`90a` of `sm_90a`).
fn arch_suffix(arch: &str) -> Result<&str, String> {
    arch.strip_prefix("compute_")
        .or_else(|| arch.strip_prefix("sm_"))
        .filter(|n| n.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| format!("DARTS_CUDA_ARCH={arch}: expected compute_XX or sm_XX"))
}

/// The compute capability, times ten, of a `DARTS_CUDA_ARCH` (80 for `compute_80`).
fn arch_number(arch: &str) -> Result<u32, String> {
    let digits: String = arch_suffix(arch)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| format!("DARTS_CUDA_ARCH={arch}: expected compute_XX or sm_XX"))
}

fn compile_family(
    nvcc: &Path,
    ptxas: &Path,
    arch: &str,
    ptxas_arch: &str,
    root: &Path,
    out: &Path,
    family: &Family,
) -> Result<(), String> {
    let ptx = out.join(format!("{}.ptx", family.name));
    let source = family.path.display();
    let output = Command::new(nvcc)
        .current_dir(root)
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch={arch}"))
        .arg("-o")
        .arg(&ptx)
        .arg(&family.path)
        .output()
        .map_err(|e| format!("running {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on {source}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo::warning=nvcc {}: {line}", family.name);
    }
    let text = fs::read_to_string(&ptx).map_err(|e| format!("{}: {e}", ptx.display()))?;
    let version = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .and_then(|v| {
            let (major, minor) = v.trim().split_once('.')?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        })
        .ok_or_else(|| {
            format!(
                "{}: no `.version` line in the PTX of {source}",
                ptx.display()
            )
        })?;
    if version > MAX_PTX_VERSION {
        return Err(format!(
            "{source}: nvcc ({}) emitted PTX ISA {}.{}, newer than {}.{}, the newest that driver \
             580 (CUDA 13.0) loads; use nvcc 13.0: {INSTALL_HINT}",
            nvcc.display(),
            version.0,
            version.1,
            MAX_PTX_VERSION.0,
            MAX_PTX_VERSION.1
        ));
    }
    let output = Command::new(ptxas)
        .arg(format!("-arch={ptxas_arch}"))
        .arg("-v")
        .arg(&ptx)
        .args(["-o", "/dev/null"])
        .output()
        .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
    let report = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(format!("ptxas failed on the PTX of {source}:\n{report}"));
    }
    write(&out.join(format!("{}.ptxas.txt", family.name)), &report)
}

// ---- The emulator -------------------------------------------------------------------------------

/// Compiles the kernels, the emulator runtime and the generated launch entries into one static
/// library (`libdarts_emu.a`), linked into the crate.
fn build_emulator(root: &Path, out: &Path, families: &[Family]) -> Result<(), String> {
    let launch = out.join("emu_launch.cpp");
    write(&launch, &emu_entries(families))?;
    let header = root.join("kernels/emu/cuda_emu.h");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        // The emulator is always optimised: debug builds of the crate would otherwise run every
        // kernel at -O0.
        .opt_level(2)
        .define("DARTS_EMU", None)
        // Round every float operation separately, as the Rust reference does, on every host.
        .flag("-ffp-contract=off")
        .flag("-include")
        .flag(header.to_str().ok_or("non-UTF-8 path")?)
        .include(root.join("kernels"))
        // The emulated CUDA headers (mma.h), found before any of the host's own.
        .include(root.join("kernels/emu/include"))
        .file(root.join("kernels/emu/cuda_emu.cpp"))
        .file(&launch)
        // Read `.cu` files as C++ (the option applies to every source file of the build).
        .flag("-x")
        .flag("c++");
    for family in families {
        build.file(&family.path);
    }
    build.try_compile("darts_emu").map_err(|e| e.to_string())
}

/// The C++ file of `extern "C"` entry points, one per kernel: each runs its kernel over the grid.
fn emu_entries(families: &[Family]) -> String {
    let mut s = String::from(
        "// Generated by build.rs from kernels/*.cu: one emulator entry point per kernel.\n\
         #include <cstddef>\n\n\
         #include \"common.cuh\"  // the parameter structs\n\n",
    );
    for k in families.iter().flat_map(|f| &f.kernels) {
        let params: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| format!("{} {n}", t.c()))
            .collect();
        let names: Vec<&str> = k.params.iter().map(|(_, n)| n.as_str()).collect();
        let buffers: Vec<String> = k
            .params
            .iter()
            .filter(|(t, _)| t.pointee().is_some())
            .map(|(t, n)| format!("{{{n}, {}}}", *t == CType::ConstU64Ptr))
            .collect();
        let _ = write!(
            s,
            "// {location}\n\
             extern \"C\" void {name}({params});\n\
             extern \"C\" int emu_launch_{name}(const unsigned* grid, const unsigned* block, \
             unsigned shared_bytes, char* error, std::size_t error_len, {params}) {{\n    \
             return darts_emu::launch(\"{name}\", {{{buffers}}}, grid, block, shared_bytes, \
             error, error_len, [&] {{ {name}({args}); }});\n}}\n\n",
            location = k.location,
            name = k.name,
            params = params.join(", "),
            args = names.join(", "),
            buffers = buffers.join(", "),
        );
    }
    s
}

// ---- Generated Rust -----------------------------------------------------------------------------

/// Writes the generated `impl Family`'s `pub const fn {name}(self) -> &'static str`, after a
/// blank line and documented by `doc`: a match with one arm per family, whose value is the Rust
/// expression `value(family)`.
fn family_str_fn(
    s: &mut String,
    families: &[Family],
    doc: &str,
    name: &str,
    value: impl Fn(&Family) -> String,
) {
    let _ = writeln!(
        s,
        "\n    /// {doc}\n    pub const fn {name}(self) -> &'static str {{\n        match self {{"
    );
    for f in families {
        let _ = writeln!(
            s,
            "            Family::{} => {},",
            camel_case(&f.name),
            value(f)
        );
    }
    let _ = writeln!(s, "        }}\n    }}");
}

/// The Rust expression for the text of `OUT_DIR/{file}`, included at compile time.
fn include_from_out_dir(file: &str) -> String {
    format!("include_str!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))")
}

fn rust_bindings(families: &[Family], ptx_arch: Option<u32>) -> String {
    let has_ptx = ptx_arch.is_some();
    let ptx_arch = ptx_arch.unwrap_or(0);
    let kernels: Vec<(&Family, &Kernel)> = families
        .iter()
        .flat_map(|f| f.kernels.iter().map(move |k| (f, k)))
        .collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by build.rs from kernels/*.cu: do not edit. One line per kernel signature \
         decides everything below.\n\n\
         use crate::device::gpu::{{\n    ConvWindow, Dtype, DeviceBuffer, EmuArg, Executor, GpuError, KernelArg, \
         LaunchConfig, ParamKind,\n}};\n\n\
         /// Whether this build holds PTX (nvcc was found at build time).\n\
         pub const HAS_PTX: bool = {has_ptx};\n\n\
         /// The compute capability the PTX targets, times ten (80 for `compute_80`; 0 without PTX).\n\
         pub const PTX_ARCH: u32 = {ptx_arch};\n"
    );

    // Families.
    let _ = writeln!(
        s,
        "/// A kernel family: one `kernels/<family>.cu` file, one PTX module.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n\
         pub enum Family {{"
    );
    for f in families {
        let _ = writeln!(
            s,
            "    /// `kernels/{}.cu`.\n    {},",
            f.name,
            camel_case(&f.name)
        );
    }
    let _ = writeln!(
        s,
        "}}\n\nimpl Family {{\n    /// Every family, in file-name order.\n    \
         pub const ALL: &'static [Family] = &[{}];",
        families
            .iter()
            .map(|f| format!("Family::{}", camel_case(&f.name)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    family_str_fn(
        &mut s,
        families,
        "The family's name, as in `kernels/<name>.cu`.",
        "name",
        |f| format!("\"{}\"", f.name),
    );
    family_str_fn(
        &mut s,
        families,
        "The PTX nvcc made of the family (empty when the crate was built without nvcc).",
        "ptx",
        |f| include_from_out_dir(&format!("{}.ptx", f.name)),
    );
    family_str_fn(
        &mut s,
        families,
        "What ptxas said assembling that PTX for sm_90 with `-v`: registers, shared memory, stack\n    \
         /// and spills per kernel (empty when the crate was built without nvcc).",
        "ptxas_report",
        |f| include_from_out_dir(&format!("{}.ptxas.txt", f.name)),
    );
    let _ = writeln!(s, "}}\n");

    // Kernel ids.
    let _ = writeln!(
        s,
        "/// Every kernel in `kernels/*.cu`, named after its C name in CamelCase.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n\
         pub enum KernelId {{"
    );
    for (_, k) in &kernels {
        let _ = writeln!(
            s,
            "    /// `{}` ({}).\n    {},",
            k.name,
            k.location,
            camel_case(&k.name)
        );
    }
    let _ = writeln!(
        s,
        "}}\n\nimpl KernelId {{\n    /// Every kernel, family by family, in source order.\n    \
         pub const ALL: &'static [KernelId] = &[\n{}    ];\n",
        kernels
            .iter()
            .map(|(_, k)| format!("        KernelId::{},\n", camel_case(&k.name)))
            .collect::<String>()
    );
    let arms = |f: &dyn Fn(&Family, &Kernel) -> String| -> String {
        kernels
            .iter()
            .map(|(fam, k)| {
                format!(
                    "            KernelId::{} => {},\n",
                    camel_case(&k.name),
                    f(fam, k)
                )
            })
            .collect()
    };
    let _ = writeln!(
        s,
        "    /// The kernel's C name (its `.entry` in the PTX).\n    \
         pub const fn name(self) -> &'static str {{\n        match self {{\n{}        }}\n    }}\n",
        arms(&|_, k| format!("\"{}\"", k.name))
    );
    let _ = writeln!(
        s,
        "    /// The family (file) the kernel is declared in.\n    \
         pub const fn family(self) -> Family {{\n        match self {{\n{}        }}\n    }}\n",
        arms(&|f, _| format!("Family::{}", camel_case(&f.name)))
    );
    let _ = writeln!(
        s,
        "    /// Where the kernel is declared, `kernels/<family>.cu:<line>`.\n    \
         pub const fn location(self) -> &'static str {{\n        match self {{\n{}        }}\n    }}\n",
        arms(&|_, k| format!("\"{}\"", k.location))
    );
    let _ = writeln!(
        s,
        "    /// The kernel's parameters: name and kind, in order.\n    \
         pub const fn params(self) -> &'static [(&'static str, ParamKind)] {{\n        match self {{\n{}        }}\n    }}\n}}\n",
        arms(&|_, k| {
            let list: Vec<String> = k
                .params
                .iter()
                .map(|(t, n)| format!("(\"{n}\", {})", param_kind(*t, nullable(n))))
                .collect();
            format!("&[{}]", list.join(", "))
        })
    );

    // Typed launchers.
    for (_, k) in &kernels {
        let c_params: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| format!("{} {n}", t.c()))
            .collect();
        let rust_params: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| format!("{n}: {}", t.launcher(nullable(n))))
            .collect();
        let args: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| match (t.pointee(), t.scalar()) {
                (Some((_, _, false)), _) if nullable(n) => {
                    format!("KernelArg::buffer_or_null({n})")
                }
                (Some((_, _, true)), _) if nullable(n) => {
                    format!("KernelArg::buffer_or_null({n}.as_deref())")
                }
                (Some(_), _) => format!("KernelArg::buffer({n})"),
                (None, Some((_, variant))) => format!("KernelArg::{variant}({n})"),
                (None, None) => unreachable!(),
            })
            .collect();
        let allow = if k.params.len() + 2 > 7 {
            "#[allow(clippy::too_many_arguments)] // one Rust argument per kernel parameter\n"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "/// Launches `{name}` ({location}):\n\
             /// `{name}({c_params})`.\n\
             ///\n\
             /// # Safety\n\
             /// The kernel must stay inside the buffers given the scalar arguments (for example,\n\
             /// every buffer holds at least `n` elements when the kernel reads `n`).\n\
             {allow}pub unsafe fn {name}(\n    exec: &dyn Executor,\n    config: LaunchConfig,\n    {rust_params},\n) -> Result<(), GpuError> {{\n    \
             let args = [{args}];\n    \
             // SAFETY: the caller upholds this function's contract, which is the kernel's.\n    \
             unsafe {{ exec.launch(KernelId::{id}, config, &args) }}\n}}\n",
            name = k.name,
            location = k.location,
            c_params = c_params.join(", "),
            rust_params = rust_params.join(",\n    "),
            args = args.join(", "),
            id = camel_case(&k.name),
        );
    }

    // Emulator entry points and the dispatch.
    let _ = writeln!(
        s,
        "#[allow(clippy::too_many_arguments)]\n\
         mod emu_ffi {{\n    \
         use super::ConvWindow;\n\n    \
         unsafe extern \"C\" {{"
    );
    for (_, k) in &kernels {
        let params: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| format!("{n}: {}", t.ffi()))
            .collect();
        let _ = writeln!(
            s,
            "        pub(super) fn emu_launch_{}(\n            grid: *const u32,\n            block: *const u32,\n            \
             shared_bytes: u32,\n            error: *mut std::ffi::c_char,\n            error_len: usize,\n            {},\n        ) -> i32;",
            k.name,
            params.join(",\n            ")
        );
    }
    let _ = writeln!(s, "    }}\n}}\n");
    let _ = writeln!(
        s,
        "/// Runs `kernel` on the emulator with `args` (already converted to host pointers and\n\
         /// scalars), writing any error message into `error`; returns the emulator's status (0: ok).\n\
         ///\n\
         /// # Safety\n\
         /// `args` match the kernel's parameters in number and kind, every pointer is the start of a\n\
         /// live emulator allocation, and the kernel stays inside those allocations.\n\
         pub(crate) unsafe fn emu_dispatch(\n    kernel: KernelId,\n    config: &LaunchConfig,\n    args: &[EmuArg],\n    \
         error: &mut [u8],\n) -> i32 {{\n    \
         let (grid, block) = (config.grid.as_ptr(), config.block.as_ptr());\n    \
         let (shared, message, len) = (config.shared_bytes, error.as_mut_ptr().cast(), error.len());\n    \
         match kernel {{"
    );
    for (_, k) in &kernels {
        let args: Vec<String> = k
            .params
            .iter()
            .enumerate()
            .map(|(i, (t, _))| match (t.pointee(), t.scalar()) {
                (Some((elem, _, false)), _) => {
                    format!("args[{i}].pointer().cast::<{elem}>().cast_const()")
                }
                (Some((elem, _, true)), _) => format!("args[{i}].pointer().cast::<{elem}>()"),
                (None, Some((ty, _))) => format!("args[{i}].scalar::<{ty}>()"),
                (None, None) => unreachable!(),
            })
            .collect();
        let _ = writeln!(
            s,
            "        // SAFETY: this function's contract; the entry point runs `{name}` on the grid.\n        \
             KernelId::{id} => unsafe {{\n            emu_ffi::emu_launch_{name}(\n                grid,\n                block,\n                \
             shared,\n                message,\n                len,\n                {args},\n            )\n        }},",
            name = k.name,
            id = camel_case(&k.name),
            args = args.join(",\n                ")
        );
    }
    let _ = writeln!(s, "    }}\n}}");
    s
}

/// The generated `ParamKind` of a parameter type.
fn param_kind(t: CType, nullable: bool) -> String {
    match (t.pointee(), t.scalar()) {
        (Some((_, dtype, writes)), _) => format!(
            "ParamKind::Buffer {{ dtype: Dtype::{dtype}, writes: {writes}, nullable: {nullable} }}"
        ),
        (None, Some((_, variant))) => format!("ParamKind::{variant}"),
        (None, None) => unreachable!(),
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    // Leave an unchanged file alone, so that its timestamp does not trigger recompilation.
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
