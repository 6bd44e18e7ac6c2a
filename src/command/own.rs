use super::*;

/// Container ids dockside runs in, if it runs in a container: Docker bind-mounts
/// `/etc/hostname` & co. from `/var/lib/docker/containers/<id>/`, and cgroup v1
/// paths end in the id.
pub fn own_container_ids(mountinfo: &str, cgroup: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for line in mountinfo.lines() {
        for part in line.split_whitespace() {
            if let Some(rest) = part.split("/containers/").nth(1)
                && let Some(id) = rest.split('/').next().filter(|id| is_container_id(id))
            {
                ids.insert(id.to_string());
            }
        }
    }
    for line in cgroup.lines() {
        let last = line.rsplit('/').next().unwrap_or("");
        let last = last
            .trim_start_matches("docker-")
            .trim_end_matches(".scope");
        if is_container_id(last) {
            ids.insert(last.to_string());
        }
    }
    ids
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Reads `/proc/self` for `own_container_ids`.
pub fn detect_own_container() -> HashSet<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own_container_ids(&mountinfo, &cgroup)
}
