//! Policy text from files and from the admin API, parsed into Cedar policies
//! with stable ids, and errors that name the file, line and reason.

use cedar_policy::{Policy, PolicyId, PolicySet};
use miette::Diagnostic;
use std::path::Path;
use std::str::FromStr;

/// One named unit of policy text: a `*.cedar` file or a stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    /// File name (`github.cedar`) or `api:<name>` for stored policies.
    pub origin: String,
    pub text: String,
}

/// A policy as loaded, for listings and explanations.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyInfo {
    pub id: String,
    pub effect: &'static str,
    pub origin: String,
    pub line: usize,
    pub checkpoint: Option<String>,
    pub text: String,
}

/// A policy that failed to load, located in its source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

/// Line and column (1-based) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto
        .rfind('\n')
        .map_or(upto.len(), |nl| upto.len() - nl - 1)
        + 1;
    (line, col)
}

/// The first labelled location of a diagnostic, with its full message.
pub(crate) fn located(origin: &str, text: &str, d: &dyn Diagnostic, msg: String) -> SourceError {
    let offset = d
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .unwrap_or(0);
    let (line, column) = line_col(text, offset);
    let mut message = msg;
    if let Some(help) = d.help() {
        message.push_str(&format!(" ({help})"));
    }
    SourceError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}

/// A parsed policy and where it came from.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub policy: Policy,
    pub origin: String,
    pub line: usize,
}

/// Parse every source. Ids come from `@id("...")` or `<origin>#<n>`; a
/// duplicate id is an error, because explanations name policies by id.
pub(crate) fn parse_all(sources: &[PolicySource]) -> Result<Vec<Parsed>, Vec<SourceError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashMap::<String, String>::new();
    for src in sources {
        let set = match PolicySet::from_str(&src.text) {
            Ok(s) => s,
            Err(errs) => {
                for e in errs.iter() {
                    errors.push(located(&src.origin, &src.text, e, e.to_string()));
                }
                continue;
            }
        };
        if set.templates().next().is_some() {
            errors.push(SourceError {
                origin: src.origin.clone(),
                line: 1,
                column: 1,
                message: "policy templates (?principal, ?resource) are not supported".into(),
            });
            continue;
        }
        // The parser numbers policies policy0, policy1, … in source order.
        let mut policies: Vec<&Policy> = set.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (n, p) in policies.into_iter().enumerate() {
            let id = p
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}#{n}", src.origin));
            let line = first_line_of(&src.text, n);
            if let Some(prev) = seen.insert(id.clone(), src.origin.clone()) {
                errors.push(SourceError {
                    origin: src.origin.clone(),
                    line,
                    column: 1,
                    message: format!("policy id {id:?} is already used in {prev}"),
                });
                continue;
            }
            out.push(Parsed {
                policy: p.new_id(PolicyId::new(&id)),
                origin: src.origin.clone(),
                line,
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Line where the `n`-th policy starts: the n-th `permit`/`forbid` keyword
/// at the start of a statement (annotations above it count as its start).
fn first_line_of(text: &str, n: usize) -> usize {
    let mut count = 0;
    let mut start_of_statement = true;
    let mut statement_line = 1;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        if start_of_statement {
            statement_line = i + 1;
            start_of_statement = false;
        }
        if t.starts_with("permit") || t.starts_with("forbid") {
            if count == n {
                return statement_line;
            }
            count += 1;
        }
        if strip_comment(t).trim_end().ends_with(';') {
            start_of_statement = true;
        }
    }
    1
}

fn strip_comment(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Read every `*.cedar` file of a directory, sorted by name.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<PolicySource>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path)?;
        let origin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(PolicySource { origin, text });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_lines_and_duplicates() {
        let text = "// header\n@id(\"a\")\npermit(principal, action, resource);\n\nforbid(principal,\n action, resource);\n";
        let parsed = parse_all(&[PolicySource {
            origin: "x.cedar".into(),
            text: text.into(),
        }])
        .unwrap();
        assert_eq!(parsed[0].policy.id().to_string(), "a");
        assert_eq!(parsed[0].line, 2);
        assert_eq!(parsed[1].policy.id().to_string(), "x.cedar#1");
        assert_eq!(parsed[1].line, 5);
        let dup = parse_all(&[
            PolicySource {
                origin: "x.cedar".into(),
                text: text.into(),
            },
            PolicySource {
                origin: "y.cedar".into(),
                text: "@id(\"a\") permit(principal, action, resource);".into(),
            },
        ])
        .unwrap_err();
        assert!(
            dup[0].message.contains("already used in x.cedar"),
            "{dup:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let errs = parse_all(&[PolicySource {
            origin: "bad.cedar".into(),
            text: "permit(principal, action, resource);\n\npermit(principal, action resource);\n"
                .into(),
        }])
        .unwrap_err();
        assert_eq!(errs[0].origin, "bad.cedar");
        assert_eq!(errs[0].line, 3, "{errs:?}");
    }
}
