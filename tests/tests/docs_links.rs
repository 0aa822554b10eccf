//! Every link in the README, ARCHITECTURE.md and docs/ resolves inside the
//! repository: relative paths name files that exist (in a fresh clone:
//! tracked files), `#anchors` name headings of their page, and nothing
//! points above the repository root.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The pages checked.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    if root.join("ARCHITECTURE.md").exists() {
        out.push(root.join("ARCHITECTURE.md"));
    }
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                // mdBook's output, when built locally.
                if !path.ends_with("book") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Heading anchors of a Markdown page, as GitHub and mdBook derive them.
fn anchors(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut fence = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let Some(title) = line.trim_start_matches('#').strip_prefix(' ') else {
            continue;
        };
        if !line.starts_with('#') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

/// `(target)` of every `[text](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fence = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        // Drop inline code spans.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn every_link_resolves_inside_the_repository() {
    let root = root();
    let mut broken = Vec::new();
    for page in pages(&root) {
        let text = std::fs::read_to_string(&page).expect("page is readable");
        let own = anchors(&text);
        let name = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                page.clone()
            } else {
                let joined = page.parent().expect("a page's directory").join(path);
                match joined.canonicalize() {
                    Ok(p) if p.starts_with(&root) => p,
                    Ok(_) => {
                        broken.push(format!("{name}: {target} points outside the repository"));
                        continue;
                    }
                    Err(_) => {
                        broken.push(format!("{name}: {target} does not exist"));
                        continue;
                    }
                }
            };
            if !anchor.is_empty() {
                let known = if resolved == page {
                    own.clone()
                } else {
                    anchors(&std::fs::read_to_string(&resolved).unwrap_or_default())
                };
                if !known.contains(anchor) {
                    broken.push(format!("{name}: {target}: no heading #{anchor}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_finds_links_and_anchors() {
    let text =
        "# A title (`x`)\n\n[a](b.md#c) `[not](x)` and [d](#a-title-x)\n```\n[no](code)\n```\n";
    assert_eq!(links(text), ["b.md#c", "#a-title-x"]);
    assert!(anchors(text).contains("a-title-x"));
}
