//! The range of host uids and gids given to sandboxes (one of each per sandbox running at once),
//! checked at start against this process's user namespace and the host's subordinate ids.

use std::ops::Range;

/// Which kind of id a range is of, for messages and file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        }
    }

    /// The file that says which ids this process's user namespace maps.
    fn map_file(self) -> &'static str {
        match self {
            IdKind::Uid => "/proc/self/uid_map",
            IdKind::Gid => "/proc/self/gid_map",
        }
    }

    /// The host's subordinate ids, handed to users for rootless containers.
    fn subordinate_file(self) -> &'static str {
        match self {
            IdKind::Uid => "/etc/subuid",
            IdKind::Gid => "/etc/subgid",
        }
    }
}

/// `base .. base + count`, or `None` where that passes the largest id.
pub(crate) fn range(base: u32, count: u32) -> Option<Range<u64>> {
    let end = u64::from(base) + u64::from(count);
    (count > 0 && end <= u64::from(u32::MAX)).then(|| u64::from(base)..end)
}

/// Why `wanted` cannot serve as sandbox ids in a namespace whose `uid_map` or `gid_map` reads
/// `map`, for a process whose own id is `own`; `None` if it can. Ids are mapped into a
/// sandbox's namespace from this one's, so each must be mapped here, and none may be this
/// process's own (root inside a sandbox would be the worker outside).
pub(crate) fn unusable(wanted: &Range<u64>, map: &str, own: u32) -> Option<String> {
    if wanted.contains(&u64::from(own)) {
        return Some(format!("it holds this process's own id {own}"));
    }
    let mut mapped: Vec<Range<u64>> = map
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(inside)), Some(Ok(_)), Some(Ok(count))) =
                (fields.next(), fields.next(), fields.next())
            else {
                return None;
            };
            Some(inside..inside.saturating_add(count))
        })
        .collect();
    mapped.sort_by_key(|r| r.start);
    // Walks the mapped ranges, in order, over the wanted one.
    let mut next = wanted.start;
    for r in &mapped {
        if r.start <= next && next < r.end {
            next = r.end;
        }
        if next >= wanted.end {
            return None;
        }
    }
    let shown: Vec<String> = mapped
        .iter()
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect();
    Some(format!(
        "{next} is not mapped in this user namespace, which maps {}",
        if shown.is_empty() {
            "nothing".to_owned()
        } else {
            shown.join(", ")
        }
    ))
}

/// The entries of a `/etc/subuid` or `/etc/subgid` text (`name:start:count`) that overlap
/// `wanted`, as `name:start:count`.
pub(crate) fn overlapping_subordinates(wanted: &Range<u64>, text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().splitn(3, ':');
            let (name, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            let start: u64 = start.trim().parse().ok()?;
            let count: u64 = count.trim().parse().ok()?;
            let overlaps = start < wanted.end && wanted.start < start.saturating_add(count);
            overlaps.then(|| format!("{name}:{start}:{count}"))
        })
        .collect()
}

/// Checks `base .. base + count` of `kind` against this process's user namespace (an error
/// names why it cannot be used) and warns where the host hands out some of it as subordinate
/// ids (to rootless containers, whose processes would share a uid with a sandbox).
///
/// # Errors
/// The reason, as a phrase, when the range cannot be used.
pub(crate) fn check(kind: IdKind, base: u32, count: u32) -> Result<(), String> {
    let Some(wanted) = range(base, count) else {
        return Err(format!(
            "a range of {count} from {base} is empty or passes the largest {}",
            kind.name()
        ));
    };
    let own = match kind {
        IdKind::Uid => nix::unistd::geteuid().as_raw(),
        IdKind::Gid => nix::unistd::getegid().as_raw(),
    };
    let map = std::fs::read_to_string(kind.map_file())
        .map_err(|e| format!("read {}: {e}", kind.map_file()))?;
    if let Some(why) = unusable(&wanted, &map, own) {
        return Err(why);
    }
    if let Ok(text) = std::fs::read_to_string(kind.subordinate_file()) {
        let overlapping = overlapping_subordinates(&wanted, &text);
        if !overlapping.is_empty() {
            tracing::warn!(
                file = kind.subordinate_file(),
                entries = %overlapping.join(", "),
                "Sandbox {}s {}..{} overlap subordinate ids the host hands out.",
                kind.name(),
                wanted.start,
                wanted.end
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_must_be_mapped_and_not_our_own() {
        let host = "         0          0 4294967295\n";
        let pod = "         0 1558446080      65536\n";
        let split = "0 100000 1000\n1000 5000 1000\n3000 9000 10\n";
        let cases: &[(&str, u32, u32, u32, Option<&str>)] = &[
            (host, 200_000, 65_536, 0, None),
            (host, 0, 10, 0, Some("this process's own id 0")),
            (host, 200_000, 65_536, 200_001, Some("own id 200001")),
            (pod, 200_000, 65_536, 0, Some("200000 is not mapped")),
            (pod, 1, 65_535, 0, None),
            (pod, 1, 65_536, 0, Some("65536 is not mapped")),
            // Adjacent mapped ranges count as one.
            (split, 1, 1_999, 0, None),
            (split, 1, 2_000, 0, Some("2000 is not mapped")),
            ("", 1, 1, 0, Some("which maps nothing")),
        ];
        for &(map, base, count, own, want) in cases {
            let wanted = range(base, count).expect("a range");
            let got = unusable(&wanted, map, own);
            match want {
                None => assert_eq!(got, None, "{base}+{count} in {map:?}"),
                Some(part) => {
                    let got = got.unwrap_or_default();
                    assert!(got.contains(part), "{base}+{count} in {map:?}: {got}");
                }
            }
        }
        assert_eq!(range(u32::MAX - 1, 2), None);
        assert_eq!(range(5, 0), None);
    }

    #[test]
    fn subordinate_overlaps_are_found() {
        let text =
            "alice:100000:65536\nbob:165536:65536\n# comment\ncontainers:1000000000:1000000000\n";
        let wanted = range(200_000, 65_536).expect("a range");
        assert_eq!(
            overlapping_subordinates(&wanted, text),
            ["bob:165536:65536"]
        );
        let wanted = range(300_000, 1_000).expect("a range");
        assert!(overlapping_subordinates(&wanted, text).is_empty());
    }
}
