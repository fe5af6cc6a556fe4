//! The Lua scripts, one file each under `scripts/` (each opens with what
//! it takes and returns), loaded once per server and called by SHA.

use redis::Script;

/// The compiled scripts.
pub(crate) struct Scripts {
    pub(crate) write_one: Script,
    pub(crate) write: Script,
    pub(crate) raise: Script,
    pub(crate) seal: Script,
    pub(crate) present: Script,
    pub(crate) prune_group: Script,
    pub(crate) prune_begin: Script,
    pub(crate) prune_end: Script,
    pub(crate) prune_markers: Script,
    pub(crate) layout: Script,
    pub(crate) permissions: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            write_one: Script::new(include_str!("scripts/write_one.lua")),
            write: Script::new(include_str!("scripts/write.lua")),
            raise: Script::new(include_str!("scripts/raise.lua")),
            seal: Script::new(include_str!("scripts/seal.lua")),
            present: Script::new(include_str!("scripts/present.lua")),
            prune_group: Script::new(include_str!("scripts/prune_group.lua")),
            prune_begin: Script::new(include_str!("scripts/prune_begin.lua")),
            prune_end: Script::new(include_str!("scripts/prune_end.lua")),
            prune_markers: Script::new(include_str!("scripts/prune_markers.lua")),
            layout: Script::new(include_str!("scripts/layout.lua")),
            permissions: Script::new(include_str!("scripts/permissions.lua")),
        }
    }
}
