//! Startup benchmark: sandbox create -> /bin/true -> destroy, beside `unshare` and `bwrap`.

fn main() {}
