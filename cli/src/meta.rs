//! A suite's metadata for the history store: detected from the environment variables
//! of GitHub Actions, GitLab CI, Jenkins and Buildkite, then overridden by
//! `isotest run --meta KEY=VALUE`. Pure over an environment lookup, so every CI system
//! is unit-tested here.

use std::collections::BTreeMap;

use isotest_protocol::api::meta::{BRANCH, COMMIT, JOB_URL, REPOSITORY, SYSTEM};

/// The metadata of the CI system `env` describes (none when it is none of the four).
pub fn detect(env: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut meta = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            meta.insert(key.to_owned(), value);
        }
    };
    if var("GITHUB_ACTIONS").as_deref() == Some("true") {
        put(SYSTEM, Some("github-actions".into()));
        put(REPOSITORY, var("GITHUB_REPOSITORY"));
        // A pull request's own branch, else the ref the run is for.
        put(
            BRANCH,
            var("GITHUB_HEAD_REF").or_else(|| var("GITHUB_REF_NAME")),
        );
        put(COMMIT, var("GITHUB_SHA"));
        if let (Some(server), Some(repo), Some(run)) = (
            var("GITHUB_SERVER_URL"),
            var("GITHUB_REPOSITORY"),
            var("GITHUB_RUN_ID"),
        ) {
            put(JOB_URL, Some(format!("{server}/{repo}/actions/runs/{run}")));
        }
    } else if var("GITLAB_CI").is_some() {
        put(SYSTEM, Some("gitlab-ci".into()));
        put(REPOSITORY, var("CI_PROJECT_PATH"));
        put(
            BRANCH,
            var("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME").or_else(|| var("CI_COMMIT_REF_NAME")),
        );
        put(COMMIT, var("CI_COMMIT_SHA"));
        put(JOB_URL, var("CI_JOB_URL"));
    } else if var("BUILDKITE").as_deref() == Some("true") {
        put(SYSTEM, Some("buildkite".into()));
        put(REPOSITORY, var("BUILDKITE_REPO"));
        put(BRANCH, var("BUILDKITE_BRANCH"));
        put(COMMIT, var("BUILDKITE_COMMIT"));
        put(
            JOB_URL,
            match (var("BUILDKITE_BUILD_URL"), var("BUILDKITE_JOB_ID")) {
                (Some(build), Some(job)) => Some(format!("{build}#{job}")),
                (build, _) => build,
            },
        );
    } else if var("JENKINS_URL").is_some() {
        put(SYSTEM, Some("jenkins".into()));
        put(REPOSITORY, var("GIT_URL"));
        put(BRANCH, var("BRANCH_NAME").or_else(|| var("GIT_BRANCH")));
        put(COMMIT, var("GIT_COMMIT"));
        put(JOB_URL, var("BUILD_URL"));
    }
    meta
}

/// `KEY=VALUE` of `--meta`.
///
/// # Errors
///
/// Returns the one-line reason when there is no `=` or the key is empty.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// The suite's metadata: the manifest's `[meta]`, then what the CI system's
/// environment says, then `--meta`, each overriding the one before.
pub fn merge(
    manifest: &BTreeMap<String, String>,
    detected: BTreeMap<String, String>,
    given: &[(String, String)],
) -> BTreeMap<String, String> {
    let mut meta = manifest.clone();
    meta.extend(detected);
    meta.extend(given.iter().cloned());
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_from(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        detect(|name| vars.get(name).cloned())
    }

    fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_ci_system_is_read_from_its_own_variables() {
        let cases = [
            (
                vec![
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_REPOSITORY", "acme/shop"),
                    ("GITHUB_REF_NAME", "main"),
                    ("GITHUB_SHA", "abc"),
                    ("GITHUB_SERVER_URL", "https://github.com"),
                    ("GITHUB_RUN_ID", "42"),
                ],
                expect(&[
                    ("system", "github-actions"),
                    ("repository", "acme/shop"),
                    ("branch", "main"),
                    ("commit", "abc"),
                    ("job_url", "https://github.com/acme/shop/actions/runs/42"),
                ]),
            ),
            (
                vec![
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_HEAD_REF", "fix-1"),
                    ("GITHUB_REF_NAME", "7/merge"),
                ],
                expect(&[("system", "github-actions"), ("branch", "fix-1")]),
            ),
            (
                vec![
                    ("GITLAB_CI", "true"),
                    ("CI_PROJECT_PATH", "acme/shop"),
                    ("CI_COMMIT_REF_NAME", "dev"),
                    ("CI_COMMIT_SHA", "def"),
                    ("CI_JOB_URL", "https://gitlab.example/acme/shop/-/jobs/7"),
                ],
                expect(&[
                    ("system", "gitlab-ci"),
                    ("repository", "acme/shop"),
                    ("branch", "dev"),
                    ("commit", "def"),
                    ("job_url", "https://gitlab.example/acme/shop/-/jobs/7"),
                ]),
            ),
            (
                vec![
                    ("JENKINS_URL", "https://ci.example/"),
                    ("GIT_URL", "https://git.example/shop.git"),
                    ("GIT_BRANCH", "origin/main"),
                    ("GIT_COMMIT", "0123"),
                    ("BUILD_URL", "https://ci.example/job/shop/9/"),
                ],
                expect(&[
                    ("system", "jenkins"),
                    ("repository", "https://git.example/shop.git"),
                    ("branch", "origin/main"),
                    ("commit", "0123"),
                    ("job_url", "https://ci.example/job/shop/9/"),
                ]),
            ),
            (
                vec![
                    ("BUILDKITE", "true"),
                    ("BUILDKITE_REPO", "git@git.example:acme/shop.git"),
                    ("BUILDKITE_BRANCH", "main"),
                    ("BUILDKITE_COMMIT", "4567"),
                    (
                        "BUILDKITE_BUILD_URL",
                        "https://buildkite.example/acme/shop/builds/3",
                    ),
                    ("BUILDKITE_JOB_ID", "j-1"),
                ],
                expect(&[
                    ("system", "buildkite"),
                    ("repository", "git@git.example:acme/shop.git"),
                    ("branch", "main"),
                    ("commit", "4567"),
                    (
                        "job_url",
                        "https://buildkite.example/acme/shop/builds/3#j-1",
                    ),
                ]),
            ),
            (vec![("CI", "true"), ("GITHUB_SHA", "abc")], BTreeMap::new()),
        ];
        for (vars, expected) in cases {
            assert_eq!(detect_from(&vars), expected, "{vars:?}");
        }
    }

    #[test]
    fn given_pairs_override_the_environment_which_overrides_the_manifest() {
        let manifest = expect(&[("commit", "m"), ("team", "web")]);
        let detected = expect(&[("commit", "env"), ("branch", "main")]);
        let given = vec![("branch".to_owned(), "mine".to_owned())];
        assert_eq!(
            merge(&manifest, detected, &given),
            expect(&[("commit", "env"), ("branch", "mine"), ("team", "web")])
        );
        assert_eq!(parse_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_pair("novalue").is_err());
        assert!(parse_pair("=x").is_err());
    }
}
