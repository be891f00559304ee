//! Batched dispatches: `k` independent kernels of the same code in one dispatch.
//!
//! After fusion a search step still has many more dispatches than dependency levels
//! (`op_census` counts both; the README gives them at the paper configuration): most dispatches
//! of a level are the same kernel on other buffers (the ops of a node's mixed edges, the cells'
//! parallel batch-norm statistics, the convolutions of parallel edges). On a real GPU each
//! dispatch costs a launch and a pipeline barrier whatever its size, so the executor records
//! the dispatches level by level ([`super::fusion::schedule`]) and runs the kernels of one
//! level that share a text (a fused kernel's generated text, or a single-op kernel's entry
//! point) as one dispatch of an *instanced* module: instance `j` is workgroup z-index `j`.
//!
//! # The transform
//!
//! [`instanced`] rewrites a composed single-kernel module (scalar prelude, shader files,
//! generated part) for `k` instances, text to text:
//! - the one uniform binding `params: P` becomes `params_all: array<params_slot, k>` at
//!   binding 0, `params_slot` holding `v: P` padded to a multiple of 16 bytes (a uniform
//!   array's stride must be; [`params_stride`]), element `j` instance `j`'s parameters; every
//!   storage binding `b` (`s` of them, in binding order) becomes `b_j` at binding
//!   `1 + j s + index` for instance `j` ([`layout`] maps a kernel's bind group layout the
//!   same way);
//! - a function that reads a binding, or calls a function that does, is copied once per
//!   instance with those names renamed (`params` to `params_all[j].v`, `b` to `b_j`, `f` to
//!   `f_j`); every other item (structs, constants, workgroup memory, the elementwise ops) is
//!   kept once, unchanged;
//! - the requested entry point `e` keeps its attributes and parameters and becomes
//!   `switch wid.z { case j: { e_j(...) } }`, `e_j` its renamed copy with its parameters'
//!   builtin attributes dropped; other entry points are dropped.
//!
//! **Why instance j computes what the single kernel computes** (proofs/gpu-kernel-choices.md,
//! claim 12): `e_j` is the single kernel's text with its bindings renamed to instance `j`'s,
//! called with the same builtins (workgroup x and y, the invocation index; `num_workgroups.z`
//! is never read), so each invocation of instance `j` executes the same operations on the
//! same values as that invocation of the single dispatch, provided the grid in x and y covers
//! every instance's (the host takes the largest; every entry point returns at once for
//! indices beyond its own parameters' bounds, as it does for the round-up of a single grid).
//! The switch is on a workgroup-uniform value, so barriers inside `e_j` stay in uniform control
//! flow; workgroup memory is shared by the instances' code but a workgroup runs one instance.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Most instances in one batched dispatch: each instance is a copy of the kernel's functions
/// in the module, so compile time grows with it; the executor also stays within the device's
/// storage buffers per stage and uniform binding size, and batches in powers of two (at most
/// `log2(MAX_INSTANCES) + 1` module variants per kernel).
pub const MAX_INSTANCES: usize = 16;

/// Most instances on a CPU adapter (lavapipe, llvmpipe): LLVM optimises modules of many
/// instances of a kernel with loops very slowly (benches/results/gpu-design-measurements.md),
/// and a CPU
/// adapter gains nothing from fewer dispatches (its time is arithmetic), so batching there is
/// exercised, not relied on.
pub const MAX_INSTANCES_CPU: usize = 4;

/// A binding of the module: its name, binding number, and whether it is the uniform one.
#[derive(Debug)]
struct Binding {
    name: String,
    number: u32,
    uniform: bool,
    /// The declaration after the name's colon (`P` or `array<S>`), without the `;`.
    ty: String,
    /// The address space and access (`uniform`, `storage, read`, ...).
    space: String,
}

/// One top-level item of a module.
#[derive(Debug)]
enum Item<'a> {
    Binding(Binding),
    Fn {
        name: String,
        entry: bool,
        text: &'a str,
    },
    Other(&'a str),
}

/// Splits WGSL text into top-level items: each ends at a `;` or a closing `}` at brace depth 0
/// (comments are skipped when counting, and belong to the item they precede).
fn split_items(code: &str) -> Vec<&str> {
    let b = code.as_bytes();
    let (mut items, mut start, mut depth, mut i) = (Vec::new(), 0, 0i32, 0);
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i..].starts_with(b"/*") {
            let mut nest = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    nest += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&code[start..=i]);
                    start = i + 1;
                }
            }
            b';' if depth == 0 => {
                items.push(&code[start..=i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if !code[start..].trim().is_empty() {
        items.push(&code[start..]);
    }
    items
}

/// `text` with `f` applied to each identifier (`Some` replaces it): numbers such as `0x1.8p1`
/// or `256u` are kept whole, so their letters are never taken for identifiers, and a member
/// after a `.` (`wid.x`, `params.total`) is a field, not an identifier, so it is kept too.
fn map_idents(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let id = &text[s..i];
            let field = out.trim_end().ends_with('.');
            match f(id).filter(|_| !field) {
                Some(r) => out.push_str(&r),
                None => out.push_str(id),
            }
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                // An exponent's sign (1e-5, 0x1p-3) belongs to the number.
                let exp = matches!(b[i], b'e' | b'E' | b'p' | b'P')
                    && i + 1 < b.len()
                    && matches!(b[i + 1], b'+' | b'-');
                i += if exp { 2 } else { 1 };
            }
            out.push_str(&text[s..i]);
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn idents(text: &str) -> HashSet<String> {
    let mut set = HashSet::new();
    map_idents(text, |id| {
        set.insert(id.to_string());
        None
    });
    set
}

/// `text` without its comments (so a comment's words are not taken for identifiers).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse_item(text: &str) -> Result<Item<'_>, String> {
    let code = code_of(text);
    let code = code.trim();
    if let Some(at) = code.find("@binding(") {
        let number = code[at + 9..]
            .split(')')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("unreadable binding number in `{code}`"))?;
        let var = code
            .find("var<")
            .ok_or_else(|| format!("binding without var<...>: `{code}`"))?;
        let close = code[var..]
            .find('>')
            .ok_or_else(|| format!("unclosed var<: `{code}`"))?
            + var;
        let space = code[var + 4..close].trim().to_string();
        let rest = &code[close + 1..];
        let (name, ty) = rest
            .split_once(':')
            .ok_or_else(|| format!("binding without a type: `{code}`"))?;
        return Ok(Item::Binding(Binding {
            name: name.trim().to_string(),
            number,
            uniform: space == "uniform",
            ty: ty.trim().trim_end_matches(';').trim().to_string(),
            space,
        }));
    }
    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace() || c == '(')
        .collect();
    if let Some(k) = words.iter().position(|w| *w == "fn") {
        let name = words
            .get(k + 1)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("function without a name: `{code}`"))?;
        return Ok(Item::Fn {
            name: name.to_string(),
            entry: code.contains("@compute"),
            text,
        });
    }
    Ok(Item::Other(text))
}

/// The index of the parenthesis closing the one at `open`.
fn closing(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    for (k, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + k);
                }
            }
            _ => {}
        }
    }
    None
}

/// Splits a parameter list at its top-level commas.
fn params_of(list: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (k, c) in list.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..k].trim());
                start = k + 1;
            }
            _ => {}
        }
    }
    if !list[start..].trim().is_empty() {
        out.push(list[start..].trim());
    }
    out
}

/// A parameter without its attributes (`@builtin(workgroup_id) wid: vec3<u32>` ->
/// `wid: vec3<u32>`).
fn strip_attributes(p: &str) -> String {
    let mut s = p.trim();
    while let Some(rest) = s.strip_prefix('@') {
        let open = rest.find('(');
        let space = rest.find(char::is_whitespace);
        s = match (open, space) {
            (Some(o), sp) if sp.is_none_or(|sp| o < sp) => {
                let close = closing(rest, o).map_or(rest.len(), |c| c + 1);
                rest[close..].trim_start()
            }
            (_, Some(sp)) => rest[sp..].trim_start(),
            _ => "",
        };
    }
    s.to_string()
}

/// A module of `code` (one kernel: one uniform `params`-like binding of `params_bytes`
/// bytes, storage bindings, the entry point `entry`) rewritten to run `k` instances in one
/// dispatch (module docs). Instance `j`'s parameters are element `j` of an array whose stride
/// is `params_bytes` rounded up to 16 (uniform arrays need it; [`params_stride`]). Returns the
/// module and the original numbers of the storage bindings, sorted: instance `j`'s copy of
/// the binding at position `s` there is binding `1 + j * len + s`.
pub fn instanced(
    code: &str,
    k: usize,
    entry: &str,
    params_bytes: usize,
) -> Result<(String, Vec<u32>), String> {
    let items: Vec<Item> = split_items(code)
        .into_iter()
        .map(parse_item)
        .collect::<Result<_, _>>()?;
    let mut bindings: Vec<&Binding> = items
        .iter()
        .filter_map(|i| match i {
            Item::Binding(b) => Some(b),
            _ => None,
        })
        .collect();
    bindings.sort_by_key(|b| b.number);
    let uniform: Vec<&&Binding> = bindings.iter().filter(|b| b.uniform).collect();
    let [params] = uniform.as_slice() else {
        return Err(format!(
            "a batched kernel needs exactly one uniform binding, found {}",
            uniform.len()
        ));
    };
    let storage: Vec<&&Binding> = bindings.iter().filter(|b| !b.uniform).collect();
    // Functions touching a binding, directly or through calls, are per instance.
    let fns: HashMap<&str, (&str, bool)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Fn { name, entry, text } => Some((name.as_str(), (*text, *entry))),
            _ => None,
        })
        .collect();
    let uses: HashMap<&str, HashSet<String>> = fns
        .iter()
        .map(|(n, (t, _))| (*n, idents(&code_of(t))))
        .collect();
    let mut per: HashSet<String> = bindings.iter().map(|b| b.name.clone()).collect();
    loop {
        let before = per.len();
        for (n, ids) in &uses {
            if !per.contains(*n) && ids.iter().any(|id| per.contains(id)) {
                per.insert(n.to_string());
            }
        }
        if per.len() == before {
            break;
        }
    }
    if !fns.get(entry).is_some_and(|(_, e)| *e) {
        return Err(format!("no entry point `{entry}` in the module"));
    }
    // The per-instance functions the entry point reaches.
    let mut reach: HashSet<&str> = HashSet::from([entry]);
    let mut todo = vec![entry];
    while let Some(f) = todo.pop() {
        for id in &uses[f] {
            if let Some((n, _)) = fns.get_key_value(id.as_str()) {
                if per.contains(*n) && reach.insert(n) {
                    todo.push(n);
                }
            }
        }
    }
    let rename = |text: &str, j: usize| {
        map_idents(text, |id| {
            if id == params.name {
                Some(format!("{}_all[{j}].v", params.name))
            } else if per.contains(id) && id != entry {
                Some(format!("{id}_{j}"))
            } else {
                None
            }
        })
    };
    let mut out = String::with_capacity(code.len() * 2);
    let _ = writeln!(
        out,
        "struct {0}_slot {{\n    @size({1}) v: {2},\n}}\n\
         @group(0) @binding(0) var<uniform> {0}_all: array<{0}_slot, {k}>;",
        params.name,
        params_stride(params_bytes),
        params.ty
    );
    for j in 0..k {
        for (s, b) in storage.iter().enumerate() {
            let _ = writeln!(
                out,
                "@group(0) @binding({}) var<{}> {}_{j}: {};",
                1 + j * storage.len() + s,
                b.space,
                b.name,
                b.ty
            );
        }
    }
    for item in &items {
        match item {
            Item::Binding(_) => {}
            Item::Other(t) => out.push_str(t),
            Item::Fn { name, .. } if !per.contains(name.as_str()) => {
                out.push_str(fns[name.as_str()].0)
            }
            Item::Fn { name, .. } if !reach.contains(name.as_str()) => {}
            Item::Fn { name, text, .. } if name == entry => {
                out.push_str(&entry_point(text, entry, k, &rename)?)
            }
            Item::Fn { text, .. } => {
                for j in 0..k {
                    out.push_str(&rename(text, j));
                }
            }
        }
    }
    out.push('\n');
    Ok((out, storage.iter().map(|b| b.number).collect()))
}

/// The bytes between consecutive instances' parameters: `params_bytes` rounded up to 16.
pub fn params_stride(params_bytes: usize) -> usize {
    params_bytes.next_multiple_of(16)
}

/// The bind group layout of `k` instances of a kernel whose single layout is `bindings`
/// (binding 0 the parameters) and whose module declares the storage bindings `storage`
/// (sorted, as [`instanced`] returns them): the parameters' array at 0, then per instance the
/// single layout's storage slots, in its order, at their instanced numbers. A dispatch binds
/// instance 0's reads and write, then instance 1's, ..., each in the single kernel's order.
pub fn layout<S: Copy + PartialEq>(
    bindings: &[(u32, S)],
    params: S,
    storage: &[u32],
    k: usize,
) -> Vec<(u32, S)> {
    let per = storage.len();
    let mut out = vec![(0, params)];
    for j in 0..k {
        for &(b, slot) in bindings.iter().filter(|(_, s)| *s != params) {
            let s = storage.iter().position(|&n| n == b).unwrap_or(per);
            out.push(((1 + j * per + s) as u32, slot));
        }
    }
    out
}

/// The entry point's per-instance copies and the dispatching entry point itself.
fn entry_point(
    text: &str,
    entry: &str,
    k: usize,
    rename: &dyn Fn(&str, usize) -> String,
) -> Result<String, String> {
    let at = |what: &str| format!("entry point `{entry}`: {what}");
    let fn_at = text.find("fn ").ok_or_else(|| at("no `fn`"))?;
    let open = fn_at
        + text[fn_at..]
            .find('(')
            .ok_or_else(|| at("no parameter list"))?;
    let close = closing(text, open).ok_or_else(|| at("unclosed parameter list"))?;
    let body_at = close + text[close..].find('{').ok_or_else(|| at("no body"))?;
    let params = params_of(&text[open + 1..close]);
    let wid = params
        .iter()
        .find(|p| p.contains("@builtin(workgroup_id)"))
        .map(|p| strip_attributes(p))
        .and_then(|p| p.split(':').next().map(|n| n.trim().to_string()))
        .ok_or_else(|| at("no @builtin(workgroup_id) parameter"))?;
    let plain: Vec<String> = params.iter().map(|p| strip_attributes(p)).collect();
    let args: Vec<&str> = plain
        .iter()
        .map(|p| p.split(':').next().unwrap_or("").trim())
        .collect();
    let mut s = String::new();
    for j in 0..k {
        let _ = write!(
            s,
            "\nfn {entry}_{j}({}) {}",
            plain.join(", "),
            rename(&text[body_at..], j)
        );
    }
    // The attributes (and any comment) before `fn`, the original parameters, the switch.
    let _ = write!(
        s,
        "\n{}fn {entry}({}) {{\n    switch {wid}.z {{\n",
        &text[..fn_at],
        &text[open + 1..close]
    );
    for j in 0..k {
        let _ = writeln!(
            s,
            "        case {j}u: {{\n            {entry}_{j}({});\n        }}",
            args.join(", ")
        );
    }
    s.push_str("        default: {}\n    }\n}");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = "struct P {\n    n: u32,\n}\n\
        @group(0) @binding(0) var<uniform> params: P;\n\
        @group(0) @binding(1) var<storage, read> in0: array<f32>;\n\
        @group(0) @binding(2) var<storage, read_write> out: array<f32>;\n\
        const W: f32 = 0x1.8p1; // params in a comment\n\
        fn twice(x: f32) -> f32 { return x * W + 1e-5; }\n\
        fn load(i: u32) -> f32 { return twice(in0[i]); }\n\
        @compute @workgroup_size(64)\n\
        fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {\n\
            let i = wid.x * 64u + lid;\n\
            if i >= params.n { return; }\n\
            out[i] = load(i);\n\
        }\n\
        @compute @workgroup_size(64)\n\
        fn other(@builtin(workgroup_id) wid: vec3<u32>) { out[0] = 1.0; }\n";

    #[test]
    fn items_split_at_top_level() {
        let items = split_items(MODULE);
        assert_eq!(items.len(), 9, "{items:#?}");
        assert!(items[4].trim().starts_with("const W"));
    }

    #[test]
    fn numbers_are_not_identifiers() {
        let r = map_idents("x1 + 0x1.8p-1 + 1e-5 + 256u + v.x", |id| {
            Some(format!("[{id}]"))
        });
        assert_eq!(r, "[x1] + 0x1.8p-1 + 1e-5 + 256u + [v].x");
    }

    #[test]
    fn instances_rename_bindings_and_the_functions_that_read_them() {
        let (m, storage) = instanced(MODULE, 3, "main", 4).unwrap();
        assert_eq!(storage, [1, 2]);
        assert!(m.contains("@size(16) v: P,"), "{m}");
        assert!(
            m.contains("var<uniform> params_all: array<params_slot, 3>;"),
            "{m}"
        );
        assert!(m.contains("@group(0) @binding(6) var<storage, read_write> out_2: array<f32>;"));
        // Shared once: the struct, the constant, the function that reads no binding.
        assert_eq!(m.matches("fn twice(").count(), 1);
        assert_eq!(m.matches("fn load_").count(), 3);
        assert!(m.contains("fn load_1(i: u32) -> f32 { return twice(in0_1[i]); }"));
        assert!(m.contains("params_all[2].v.n"));
        assert!(m.contains("fn main_0(wid: vec3<u32>, lid: u32)"));
        assert!(m.contains("switch wid.z"));
        assert!(m.contains("main_2(wid, lid);"));
        // The other entry point is dropped; comments are not renamed into code.
        assert!(!m.contains("fn other"));
        assert!(m.contains("// params in a comment"));
    }

    #[test]
    fn modules_without_one_uniform_are_refused() {
        let no_uniform = MODULE.replace("var<uniform> params: P", "var<private> params: P");
        assert!(instanced(&no_uniform, 2, "main", 4).is_err());
        assert!(instanced(MODULE, 2, "missing", 4).is_err());
    }

    #[test]
    fn layouts_place_each_instance_after_the_last() {
        // A kernel binding 1 (read) and 3 (write) of a module declaring 1, 2 and 3.
        let l = layout(&[(0, 'p'), (1, 'r'), (3, 'w')], 'p', &[1, 2, 3], 2);
        assert_eq!(l, [(0, 'p'), (1, 'r'), (3, 'w'), (4, 'r'), (6, 'w')]);
    }
}
