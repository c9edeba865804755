//! The `// #include "file.wgsl"` resolver of `shaders/` (WGSL has no modules), used by build.rs and
//! unit-tested in src/shaders.rs.
//!
//! A directive is a whole line `// #include "name.wgsl"` at module scope (column 0), naming a file in
//! `shaders/`. It is replaced by that file's resolved text, once per output: a file already pulled in
//! is skipped, so two includes that share a dependency are fine. An unknown file, a cycle, an include
//! of a kernel, or an include-only file (no `@compute`) that no kernel uses is an error.

use std::collections::BTreeMap;
use std::fmt::Write as _;

const DIRECTIVE: &str = "// #include";

pub struct Resolved {
    /// Every kernel file (one with an `@compute` entry point) with its resolved source, by name.
    pub kernels: Vec<(String, String)>,
    /// Every include-only file with the first kernel (by name) that includes it.
    pub includes: Vec<(String, String)>,
}

pub fn is_kernel(text: &str) -> bool {
    text.contains("@compute")
}

/// Resolves every kernel of `files` (file name -> text).
pub fn resolve_all(files: &BTreeMap<String, String>) -> Result<Resolved, String> {
    let mut kernels = Vec::new();
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, text) in files.iter().filter(|(_, t)| is_kernel(t)) {
        let mut done = Vec::new();
        let mut out = String::new();
        resolve(
            files,
            name,
            text,
            &mut vec![name.as_str()],
            &mut done,
            &mut out,
        )?;
        for dep in done {
            users.entry(dep).or_insert(name.as_str());
        }
        kernels.push((name.clone(), out));
    }
    let mut includes = Vec::new();
    for name in files
        .iter()
        .filter(|(_, t)| !is_kernel(t))
        .map(|(n, _)| n.as_str())
    {
        let user = users.get(name).ok_or(format!(
            "{name} has no @compute entry point and no kernel includes it"
        ))?;
        includes.push((name.to_string(), user.to_string()));
    }
    Ok(Resolved { kernels, includes })
}

/// Appends `text` (the file `name`) to `out` with its directives replaced. `stack` is the chain of
/// files being resolved (for cycles), `done` the files already in this output (each goes in once).
fn resolve<'a>(
    files: &'a BTreeMap<String, String>,
    name: &'a str,
    text: &'a str,
    stack: &mut Vec<&'a str>,
    done: &mut Vec<&'a str>,
    out: &mut String,
) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix(DIRECTIVE) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let at = format!("{name}:{}", i + 1);
        if line.starts_with(char::is_whitespace) {
            return Err(format!(
                "{at}: an include must stand at column 0 (module scope)"
            ));
        }
        let dep = rest
            .trim()
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .ok_or(format!(
                "{at}: expected {DIRECTIVE} \"file.wgsl\", found `{line}`"
            ))?;
        let (dep, dep_text) = files.get_key_value(dep).ok_or(format!(
            "{at}: includes \"{dep}\", which is not a file in shaders/"
        ))?;
        if stack.contains(&dep.as_str()) {
            return Err(format!(
                "{at}: include cycle {} -> {dep}",
                stack.join(" -> ")
            ));
        }
        if is_kernel(dep_text) {
            return Err(format!(
                "{at}: includes {dep}, a kernel (it has an @compute entry point)"
            ));
        }
        if done.contains(&dep.as_str()) {
            writeln!(out, "// (#include \"{dep}\": already included above)").unwrap();
            continue;
        }
        done.push(dep);
        stack.push(dep);
        writeln!(out, "// ---- begin {dep} (included by {name}) ----").unwrap();
        resolve(files, dep, dep_text, stack, done, out)?;
        writeln!(out, "// ---- end {dep} ----").unwrap();
        stack.pop();
    }
    Ok(())
}
