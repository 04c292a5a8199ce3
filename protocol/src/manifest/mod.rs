//! The suite manifest a user writes (TOML or JSON, one serde schema), and its
//! validation into a [`Suite`] of fully resolved [`TestSpec`]s.
//!
//! Validation is total: every field is checked, defaults are applied, and the
//! first problem is reported with the file, the field path and, where the source
//! is at hand, the line.
//!
//! Beyond `code` and `command`, a test of a framework that names its tests (pytest,
//! unittest, node, go, cargo, jest) may give a `test_id` (a pytest node id, a unittest
//! dotted name, a Node or Jest test file, a Go `[package.]TestName`, a libtest path)
//! and a `junit` test its `junit_path`. `[[discover]]` entries list a framework's ids
//! and become one test each; `isotest run` expands them in a local sandbox before it
//! runs or submits the suite (see `cli/src/discover.rs`), so validation refuses any
//! left. The suite-level `flaky_result` (`pass` by default, or `fail`) decides the
//! verdict of a test that failed and then passed on one of its `retries`; every test
//! sees its attempt number (1, 2, ...) in the variable `ISOTEST_ATTEMPT`.
//!
//! The parts: the serde schema as written, with the per-test fields listed once
//! (`raw.rs`), the resolved forms the wire carries (`wire.rs`), the size limits checked
//! before `[defaults]` is applied to any test (`limits.rs`), validation (`validate.rs`)
//! and the TOML line locator (`locate.rs`).

use std::fmt;

use crate::duration;

mod limits;
mod locate;
mod raw;
mod validate;
mod wire;

pub use limits::{
    ITEM_BYTES, Limits, MAX_ARG_BYTES, MAX_EXEC_BYTES, MAX_EXPANDED_BYTES, MAX_MANIFEST_BYTES,
    MAX_NAME_BYTES, MAX_TESTS, MAX_TEXT_BYTES, TEST_BYTES,
};
pub use raw::{
    BuildSpec, DiscoverEntry, FileSpec, FlakyResult, Manifest, TEST_FIELDS, TestEntry, TestFields,
    discovered_name,
};
pub use validate::{
    DEFAULT_TIMEOUT, MAX_CALLBACK_URL_BYTES, MAX_META_ENTRIES, MAX_META_KEY_BYTES,
    MAX_META_VALUE_BYTES, MAX_RETRIES, MAX_TIMEOUT, check_callback_url, check_meta,
    check_relative_path,
};
pub use wire::{Framework, Suite, TestBody, TestSpec};

use locate::{line_of, locate_toml_field, strip_json_position};

/// The syntax a manifest is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    /// The format a file name implies: `.json` is JSON, anything else TOML.
    pub fn from_path(path: &str) -> Format {
        if path.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// A manifest that could not be read or is not valid: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file (or `request body`) the manifest came from.
    pub origin: Option<String>,
    /// The 1-based line of the offending text, where known.
    pub line: Option<usize>,
    /// The field path, such as `tests[3].timeout`, where the problem is one field's.
    pub field: Option<String>,
    /// What is wrong, a lowercase fragment.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.origin, self.line) {
            (Some(o), Some(l)) => write!(f, "{o}:{l}: ")?,
            (Some(o), None) => write!(f, "{o}: ")?,
            (None, Some(l)) => write!(f, "line {l}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ManifestError {
    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError {
            origin: None,
            line: None,
            field: Some(path.into()),
            message: message.into(),
        }
    }

    pub(crate) fn suite(message: impl Into<String>) -> Self {
        ManifestError {
            origin: None,
            line: None,
            field: None,
            message: message.into(),
        }
    }
}

impl DiscoverEntry {
    /// The framework, checked.
    ///
    /// # Errors
    ///
    /// Returns a [`ManifestError`] for `discover[index].framework` when it names no
    /// framework that can list its tests.
    pub fn framework(&self, index: usize) -> Result<Framework, ManifestError> {
        Framework::ALL
            .into_iter()
            .find(|f| f.as_str() == self.framework && f.names_tests())
            .ok_or_else(|| {
                let choices: Vec<_> = Framework::ALL
                    .iter()
                    .filter(|f| f.names_tests())
                    .map(|f| f.as_str())
                    .collect();
                ManifestError::field(
                    format!("discover[{index}].framework"),
                    format!(
                        "`{}` cannot discover tests; expected one of {}",
                        self.framework,
                        choices.join(", ")
                    ),
                )
            })
    }
}

impl Manifest {
    /// Parses a manifest under the default [`Limits`]; `origin` names it in errors (a
    /// file path, say).
    ///
    /// # Errors
    ///
    /// Returns a [`ManifestError`] with the line where the syntax or a field's type is wrong.
    pub fn parse(
        text: &str,
        format: Format,
        origin: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        Manifest::parse_with(text, format, origin, &Limits::DEFAULT)
    }

    /// Parses a manifest of at most [`Limits::manifest_bytes`]; `origin` names it in errors.
    ///
    /// # Errors
    ///
    /// Returns a [`ManifestError`] with the line where the syntax or a field's type is
    /// wrong (with what to write instead for a spelling of the HopX cookbook's), or for
    /// a text over the limit, before it is parsed.
    pub fn parse_with(
        text: &str,
        format: Format,
        origin: Option<&str>,
        limits: &Limits,
    ) -> Result<Manifest, ManifestError> {
        let with_origin = |mut e: ManifestError| {
            e.origin = origin.map(str::to_owned);
            e
        };
        if text.len() > limits.manifest_bytes {
            return Err(with_origin(ManifestError::suite(format!(
                "manifest is {} bytes, more than the limit of {}",
                text.len(),
                limits.manifest_bytes
            ))));
        }
        match format {
            Format::Toml => toml::from_str(text).map_err(|e| {
                let line = e.span().map(|s| line_of(text, s.start));
                with_origin(ManifestError {
                    origin: None,
                    line,
                    field: None,
                    message: raw::with_hint(e.message().trim().to_owned()),
                })
            }),
            Format::Json => serde_json::from_str(text).map_err(|e| {
                with_origin(ManifestError {
                    origin: None,
                    line: (e.line() > 0).then_some(e.line()),
                    field: None,
                    message: raw::with_hint(strip_json_position(&e.to_string())),
                })
            }),
        }
    }

    /// Parses and validates in one step, locating a field's error in `text`.
    ///
    /// # Errors
    ///
    /// Returns the first [`ManifestError`] found.
    pub fn load(text: &str, format: Format, origin: Option<&str>) -> Result<Suite, ManifestError> {
        Manifest::parse(text, format, origin)?.validate_in(text, format, origin)
    }

    /// Validates a manifest parsed from `text`, locating a field's error there (entries
    /// added since, such as discovered tests, come after the written ones).
    ///
    /// # Errors
    ///
    /// Returns the first [`ManifestError`] found.
    pub fn validate_in(
        &self,
        text: &str,
        format: Format,
        origin: Option<&str>,
    ) -> Result<Suite, ManifestError> {
        self.validate().map_err(|mut e| {
            e.origin = origin.map(str::to_owned);
            if format == Format::Toml {
                e.line = e.field.as_deref().and_then(|f| locate_toml_field(text, f));
            }
            e
        })
    }
}

#[cfg(test)]
mod tests;
