//! What `/proc/PID/stat` tells about a process: its state and its parent.

/// The fields of `/proc/PID/stat` after the command name, which is in parentheses and may
/// itself hold spaces and parentheses: the state first, then the parent, ...
fn fields(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].to_string())
}

/// The parent of `pid`; `None` once it is gone.
pub fn parent(pid: u32) -> Option<u32> {
    fields(pid)?.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a zombie (exited, not reaped yet).
pub fn is_zombie(pid: u32) -> bool {
    fields(pid).is_some_and(|f| f.split_whitespace().next() == Some("Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_parent_and_state() {
        let me = std::process::id();
        assert_eq!(parent(me), Some(std::os::unix::process::parent_id()));
        assert!(!is_zombie(me));
        assert_eq!(parent(u32::MAX), None);
    }
}
