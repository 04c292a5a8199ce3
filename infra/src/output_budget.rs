//! A suite's output budget in Redis: the most bytes of test output (stdout, stderr,
//! cases' messages and details, as JSON stores them) all of a suite's results may hold.
//! Each result reserves its share before it is written ([`reserve`], one Lua script, so
//! concurrent workers cannot overrun it) and is cut to what it got ([`fit`]), each cut
//! text ending with a marker that says so.
//!
//! Sizes are counted as JSON escapes them (a control byte takes six), since that is
//! what Redis holds.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;

use isotest_protocol::names::Namespace;
use isotest_protocol::result::TestResult;

/// The output budget of a suite when the worker is given none, in bytes.
pub const DEFAULT_SUITE_OUTPUT_BYTES: u64 = 256 * 1024 * 1024;

/// How long a suite's spent budget is remembered: longer than any suite runs.
const BUDGET_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Grants up to ARGV[1] bytes of what is left of the budget ARGV[2]. KEYS: the suite's
/// budget counter. ARGV[3]: the counter's time to live, in seconds.
const RESERVE_SCRIPT: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = tonumber(ARGV[2]) - used
if left < 0 then left = 0 end
local grant = math.min(tonumber(ARGV[1]), left)
if grant > 0 then
  redis.call('INCRBY', KEYS[1], grant)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return grant
";

static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESERVE_SCRIPT));

/// What marks a text cut because its suite's budget is spent.
pub const MARKER: &str = "\n[isotest: output cut here: this suite's output budget is spent]\n";

/// The bytes `c` takes inside a JSON string, as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if c < ' ' => 6,
        c => c.len_utf8(),
    }
}

/// The bytes `text` takes inside a JSON string.
pub fn json_len(text: &str) -> u64 {
    text.chars().map(|c| escaped_len(c) as u64).sum()
}

/// Every text of a result that counts against the budget.
fn texts(result: &mut TestResult) -> Vec<&mut String> {
    let mut texts = vec![&mut result.stdout, &mut result.stderr];
    for case in &mut result.cases {
        texts.extend(case.message.as_mut());
        texts.extend(case.detail.as_mut());
    }
    texts
}

/// What a result's output takes of its suite's budget.
pub fn cost(result: &mut TestResult) -> u64 {
    texts(result).iter().map(|t| json_len(t)).sum()
}

/// Cuts `text` to its longest prefix that takes at most `room` bytes in JSON, with
/// [`MARKER`] after it; leaves it alone when it fits.
fn cut(text: &mut String, room: u64) {
    if json_len(text) <= room {
        return;
    }
    let mut used = 0u64;
    let mut end = 0;
    for (at, c) in text.char_indices() {
        let len = escaped_len(c) as u64;
        if used + len > room {
            break;
        }
        used += len;
        end = at + c.len_utf8();
    }
    text.truncate(end);
    text.push_str(MARKER);
}

/// Cuts a result's texts to `grant` bytes in all, shared fairly: small texts keep all
/// of theirs, and what they leave is split evenly among the larger ones.
pub fn fit(result: &mut TestResult, grant: u64) {
    let mut texts = texts(result);
    texts.sort_by_key(|t| json_len(t));
    let mut left = grant;
    let count = texts.len() as u64;
    for (i, text) in texts.into_iter().enumerate() {
        let share = left / (count - i as u64);
        let size = json_len(text);
        cut(text, share);
        left = left.saturating_sub(size.min(share));
    }
}

/// Reserves a result's output in its suite's budget of `budget` bytes, then cuts the
/// result to what was granted. Returns whether it was cut.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn reserve(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    result: &mut TestResult,
    budget: u64,
) -> redis::RedisResult<bool> {
    let want = cost(result);
    if want == 0 {
        return Ok(false);
    }
    let grant: u64 = RESERVE
        .key(ns.output_budget_key(&result.suite_id))
        .arg(want)
        .arg(budget)
        .arg(BUDGET_TTL.as_secs())
        .invoke_async(conn)
        .await?;
    if grant >= want {
        return Ok(false);
    }
    fit(result, grant);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use isotest_protocol::result::{CaseResult, CaseStatus, Status};

    fn result(stdout: &str, stderr: &str) -> TestResult {
        let mut result = isotest_report::fixtures::result("t", 1, true, Status::Passed);
        result.stdout = stdout.to_owned();
        result.stderr = stderr.to_owned();
        result.cases.clear();
        result
    }

    #[test]
    fn sizes_count_as_json_escapes_them() {
        assert_eq!(json_len("abc"), 3);
        assert_eq!(json_len("a\nb"), 4);
        assert_eq!(json_len("\u{1}"), 6);
        assert_eq!(json_len("é"), 2);
        for text in ["plain", "tab\tand \"quotes\" \\", "\u{0}\u{1f}\u{7f}é✓"] {
            let json = serde_json::to_string(text).expect("json");
            assert_eq!(json_len(text), json.len() as u64 - 2, "{text:?}");
        }
    }

    #[test]
    fn a_result_is_cut_fairly_to_its_grant_with_a_marker() {
        let mut r = result(&"o".repeat(1000), "short");
        assert_eq!(cost(&mut r), 1005);
        fit(&mut r, 105);
        assert_eq!(r.stderr, "short", "the small text keeps all of its bytes");
        assert_eq!(r.stdout, format!("{}{MARKER}", "o".repeat(100)));

        let mut r = result(&"\u{1}".repeat(100), &"e".repeat(100));
        fit(&mut r, 60);
        // 30 bytes each: five control bytes of six, thirty letters.
        assert_eq!(r.stdout, format!("{}{MARKER}", "\u{1}".repeat(5)));
        assert_eq!(r.stderr, format!("{}{MARKER}", "e".repeat(30)));

        let mut r = result("é✓é", "");
        fit(&mut r, 4);
        assert_eq!(
            r.stdout,
            format!("é{MARKER}"),
            "never cut inside a character"
        );

        let mut r = result("x", "y");
        r.status = Status::Failed;
        r.cases.push(CaseResult {
            name: "c".into(),
            classname: String::new(),
            file: None,
            status: CaseStatus::Failed,
            duration_ms: 0,
            message: Some("m".repeat(50)),
            detail: Some("d".repeat(50)),
        });
        assert_eq!(cost(&mut r), 102);
        fit(&mut r, 0);
        assert_eq!(
            cost(&mut r),
            4 * json_len(MARKER),
            "only the markers are left"
        );
    }
}
