//! Where in the manifest's text a problem is: the line of a syntax error's offset, and
//! the line of a field path such as `tests[3].timeout` in a TOML manifest.

use std::collections::BTreeMap;

use super::raw::ALIASES;

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// serde_json's message without its ` at line L column C`, which the error carries apart.
pub(crate) fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Finds the line of a field path such as `tests[3].timeout` in a TOML manifest
/// written in the usual layout (`[[tests]]` headers, one `key = value` a line).
pub(crate) fn locate_toml_field(text: &str, field: &str) -> Option<usize> {
    let (table, index, key) = split_field(field);
    let mut current: Option<(&str, usize)> = None;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut table_line = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let count = counts.entry(name).or_insert(0);
            current = Some((name, *count));
            *count += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = Some((name.trim(), 0));
        } else {
            let in_place = match (table, current) {
                (None, None) => true,
                (Some(t), Some((c, i))) => t == c && index.unwrap_or(0) == i,
                _ => false,
            };
            if in_place
                && let Some(key) = key
                && is_key_line(line, key)
            {
                return Some(n + 1);
            }
            continue;
        }
        if table.is_some() && current == table.map(|t| (t, index.unwrap_or(0))) {
            table_line = Some(n + 1);
            if key.is_none() {
                return table_line;
            }
        }
    }
    // A test's field the test does not set came from `[defaults]`: point at it there.
    if table == Some("tests")
        && let Some(key) = key
        && let Some(line) = locate_toml_field(text, &format!("defaults.{key}"))
        && text
            .lines()
            .nth(line - 1)
            .is_some_and(|l| is_key_line(l.trim(), key))
    {
        return Some(line);
    }
    table_line
}

/// Whether `line` (trimmed) is a `key = value` line of `key`, or of one of its aliases.
fn is_key_line(line: &str, key: &str) -> bool {
    line.contains('=')
        && line.split('=').next().is_some_and(|k| {
            let written = k.trim().trim_matches('"');
            written == key
                || ALIASES
                    .iter()
                    .any(|(alias, field)| *field == key && written == *alias)
        })
}

/// `tests[3].timeout` → (`Some("tests")`, `Some(3)`, `Some("timeout")`); `name` → (None, None, Some("name")).
pub(crate) fn split_field(field: &str) -> (Option<&str>, Option<usize>, Option<&str>) {
    let (head, key) = match field.split_once('.') {
        Some((h, rest)) => (h, Some(rest.split(['.', '[']).next().unwrap_or(rest))),
        None => (field, None),
    };
    if let Some((table, idx)) = head.split_once('[') {
        let index = idx.trim_end_matches(']').parse().ok();
        return (Some(table), index, key);
    }
    match key {
        Some(k) => (Some(head), None, Some(k)),
        None if head == "defaults" || head == "tests" => (Some(head), None, None),
        None => (None, None, Some(head)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_split_as_expected() {
        assert_eq!(
            split_field("tests[3].timeout"),
            (Some("tests"), Some(3), Some("timeout"))
        );
        assert_eq!(
            split_field("tests[0].files[1].path"),
            (Some("tests"), Some(0), Some("files"))
        );
        assert_eq!(
            split_field("defaults.timeout"),
            (Some("defaults"), None, Some("timeout"))
        );
        assert_eq!(split_field("name"), (None, None, Some("name")));
        assert_eq!(split_field("tests"), (Some("tests"), None, None));
    }
}
