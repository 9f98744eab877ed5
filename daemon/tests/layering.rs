//! The daemon's module layering, checked on its source: no module imports one above it,
//! and the files of one folder do not import each other in a circle. ARCHITECTURE.md
//! draws the same layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `daemon/src`, lowest layer first. A module may use the ones
/// in lower layers only.
const LAYERS: &[&[&str]] = &[
    &["children"],
    &[
        "bounded",
        "cgroup",
        "disk",
        "journal",
        "limits",
        "process",
        "state_dir",
        "table",
    ],
    &["guard", "reaper"],
    &["events"],
    &["git", "python", "store"],
    &["procedure"],
    &["activity", "systemd"],
    &["server"],
    &["config"],
    &["main", "manual"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A source file's module path below `daemon/src`, e.g. `["procedure", "records"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("a file below src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The code of a file without its unit tests (a `#[cfg(test)]` module ends each file)
/// and without comments.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read a source file");
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first identifiers of the paths following each occurrence of `prefix` in `code`:
/// `records` in `super::records::Records`, `a` and `b` in `super::{a::X, b}`.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level at commas.
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(group[item_start..i].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(group[item_start..i].trim()));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|name| !name.is_empty() && name != "self");
    names
}

#[test]
fn no_module_imports_one_above_it_and_no_folder_has_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();

    let mut problems = Vec::new();
    // Edges between the files of one folder: (folder, from, to).
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for file in &files {
        let path = module_path(&src, file);
        if path.is_empty() {
            // lib.rs only declares the top-level modules.
            continue;
        }
        let code = code(file);
        let top = path.first().cloned().unwrap_or_default();
        let Some(own_layer) = layer_of(&top) else {
            problems.push(format!(
                "{}: module '{top}' is in no layer of this test",
                file.display()
            ));
            continue;
        };
        for used in names_after(&code, "crate::") {
            let used = used.as_str();
            if used == top {
                continue;
            }
            match layer_of(used) {
                Some(layer) if layer < own_layer => {}
                Some(_) => problems.push(format!("{top} imports {used}, which is not below it")),
                None => problems.push(format!("{top} imports unknown module {used}")),
            }
        }
        // `super::x` in a file names a sibling file, or an item of the parent module,
        // which would make the parent and its child import each other.
        let is_folder_module = file.ends_with("mod.rs");
        let folder: Vec<String> = if is_folder_module {
            path.clone()
        } else {
            path[..path.len().saturating_sub(1)].to_vec()
        };
        let own = path.last().cloned().unwrap_or_default();
        if is_folder_module {
            continue;
        }
        for used in names_after(&code, "super::") {
            let mut sibling = folder.clone();
            sibling.push(used.clone());
            if modules.contains(&sibling) {
                edges
                    .entry(folder.clone())
                    .or_default()
                    .insert((own.clone(), used));
            } else if !folder.is_empty() {
                problems.push(format!(
                    "{}: uses super::{used}, an item of its parent module; import it from the \
                     sibling that defines it",
                    path.join("::")
                ));
            }
        }
    }
    for (folder, edges) in &edges {
        if let Some(circle) = find_cycle(edges) {
            problems.push(format!(
                "the files of {} import each other in a circle: {}",
                folder.join("/"),
                circle.join(" -> ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    for start in nodes {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, trail)) = stack.pop() {
            for (_, next) in edges.iter().filter(|(from, _)| *from == node) {
                if next == start {
                    let mut circle = trail.clone();
                    circle.push(next.clone());
                    return Some(circle);
                }
                if !trail.contains(next) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    None
}
