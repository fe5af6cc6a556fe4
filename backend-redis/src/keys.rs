//! The key scheme: which key holds what, for one namespace.

use laminar_state_api::StateBackendError;

/// The key names of one namespace.
///
/// The scheme is injective: the namespace is escaped (`%`, `/`, `{` and `}`
/// become `%25`, `%2F`, `%7B`, `%7D`), so a namespace's hash tag `{NS}`
/// holds no `/` and a group's tag `{NS/gK}` holds exactly one. No key of
/// one namespace can be a key of another, whatever the names (without the
/// escape, namespace `x/g1` would share its fence key with group 1 of `x`).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The escaped namespace, as it appears in keys.
    tag: String,
    pub(crate) groups: u32,
}

impl Keys {
    pub(crate) fn new(namespace: &str, groups: u32) -> Self {
        Self {
            tag: escape_namespace(namespace),
            groups,
        }
    }
    pub(crate) fn layout(&self) -> String {
        format!("laminar:{{{}}}:layout", self.tag)
    }
    pub(crate) fn fence(&self) -> String {
        format!("laminar:{{{}}}:fence", self.tag)
    }
    pub(crate) fn markers(&self) -> String {
        format!("laminar:{{{}}}:markers", self.tag)
    }
    pub(crate) fn sealed(&self) -> String {
        format!("laminar:{{{}}}:sealed", self.tag)
    }
    /// Unfinished prunes: prune id → bound.
    pub(crate) fn pruning(&self) -> String {
        format!("laminar:{{{}}}:pruning", self.tag)
    }
    /// How many prunes ever began: a seal that checked partials before a
    /// prune began must check them again.
    pub(crate) fn prunes(&self) -> String {
        format!("laminar:{{{}}}:prunes", self.tag)
    }
    pub(crate) fn group_of(&self, vnode: u32) -> u32 {
        vnode % self.groups
    }
    /// Every key of group `group` starts with this.
    pub(crate) fn group_prefix(&self, group: u32) -> String {
        format!("laminar:{{{}/g{group}}}:", self.tag)
    }
    pub(crate) fn group_fence(&self, group: u32) -> String {
        format!("{}fence", self.group_prefix(group))
    }
    /// The hash of group `group`'s partials in `epoch`.
    pub(crate) fn epoch_partials(&self, group: u32, epoch: u64) -> String {
        format!("{}p:{}", self.group_prefix(group), decimal(epoch))
    }
    pub(crate) fn group_epochs(&self, group: u32) -> String {
        format!("{}epochs", self.group_prefix(group))
    }
    /// The prunes allowed to delete partials in group `group`: prune id →
    /// bound, a copy of the unfinished prunes in the group's own slot, so
    /// that a prune's every delete checks, atomically, that no later prune
    /// has finished it (and unregistered it) meanwhile.
    pub(crate) fn group_pruning(&self, group: u32) -> String {
        format!("{}pruning", self.group_prefix(group))
    }
    /// Every namespace-wide key.
    pub(crate) fn namespace_keys(&self) -> [String; 6] {
        [
            self.layout(),
            self.fence(),
            self.markers(),
            self.sealed(),
            self.pruning(),
            self.prunes(),
        ]
    }
    /// One key of each kind of group `group`, with its partials of `epoch`.
    pub(crate) fn group_keys(&self, group: u32, epoch: u64) -> [String; 4] {
        [
            self.group_fence(group),
            self.group_epochs(group),
            self.group_pruning(group),
            self.epoch_partials(group, epoch),
        ]
    }
}

/// The namespace as it appears inside a hash tag: `%`, `/`, `{` and `}`
/// percent-escaped, so the tag has no brace (which would end it early) and
/// no `/` (which separates the namespace from a group number).
fn escape_namespace(namespace: &str) -> String {
    let mut escaped = String::with_capacity(namespace.len());
    for c in namespace.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A `u64` as 20 zero-padded digits, so string order is numeric order.
pub(crate) fn decimal(value: u64) -> String {
    format!("{value:020}")
}

pub(crate) fn parse_decimal(text: &str, what: &str) -> Result<u64, StateBackendError> {
    text.parse().map_err(|_| {
        StateBackendError::Serialization(format!("{what} holds {text:?}, not a number"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a namespace with `groups` groups, over a few epochs.
    fn all_keys(namespace: &str, groups: u32) -> Vec<String> {
        let keys = Keys::new(namespace, groups);
        let mut all = keys.namespace_keys().to_vec();
        for group in 0..groups {
            all.extend(keys.group_keys(group, 0));
            for epoch in [1, u64::MAX] {
                all.push(keys.epoch_partials(group, epoch));
            }
        }
        all
    }

    #[test]
    fn no_two_namespaces_share_a_key() {
        let names = [
            "x", "x/g1", "x/g0", "x/g", "x%2Fg1", "x%", "x%25", "{x}", "x}", "{x/g1}", "", "/",
            "x:fence", "x}:fence", "é/g1",
        ];
        let mut seen = std::collections::HashMap::new();
        for name in names {
            for groups in 1..=3 {
                for key in all_keys(name, groups) {
                    if let Some((other, _)) = seen.insert(key.clone(), (name, groups)) {
                        assert_eq!(
                            other, name,
                            "{key} belongs to namespaces {other:?} and {name:?}"
                        );
                    }
                }
            }
        }
    }
}
