//! Listing an epoch's partials (P16): `partials`.

use std::collections::BTreeSet;
use std::sync::Arc;

use laminar_state_api::StateBackend;

use crate::factory::BackendFactory;
use crate::runner::{Checked, ensure, for_all};
use crate::support::{Context, describe, fresh_store, open, payload, read, unique_tag, write};

/// The vnode capacity of the handles: wide enough that a listing that
/// stops at a small vnode count, or one group of a sharded store, shows.
const VNODES: u32 = 40;
/// Epochs `0..EPOCHS` are written.
const EPOCHS: u64 = 5;

/// P16: `partials(epoch)` lists exactly the vnodes written at `epoch` and
/// not pruned, in ascending order, through the writing handle and through
/// another one; an epoch never written is `Some([])`, not `None`; it agrees
/// with `read_partial`; after a prune the pruned epochs list nothing and
/// the kept ones are unchanged; a prune of everything leaves every listing
/// empty. With `fencing`, a write the fence refused is not listed.
pub async fn p16_list_partials(factory: &dyn BackendFactory) -> Checked {
    let fencing = factory.capabilities().fencing;
    let strategy = (
        proptest::collection::btree_set((0..EPOCHS, 0..VNODES), 0..24),
        0..=EPOCHS + 1,
    );
    for_all(factory, strategy, |(keys, before)| async move {
        let store = fresh_store(factory).await?;
        let tag = unique_tag("p16");
        let writer = open(&*store, &format!("{tag}-writer"), VNODES).await?;
        let other = open(&*store, &format!("{tag}-other"), VNODES).await?;
        let value = |epoch: u64, vnode: u32| payload(epoch << 32 | u64::from(vnode), 16);
        for &(epoch, vnode) in &keys {
            write(&writer, vnode, epoch, 0, &value(epoch, vnode)).await?;
        }
        let written = |epoch: u64, kept_from: u64| -> Vec<u32> {
            keys.iter()
                .filter(|&&(e, _)| e == epoch && e >= kept_from)
                .map(|&(_, v)| v)
                .collect()
        };
        for epoch in 0..=EPOCHS {
            let expected = written(epoch, 0);
            expect_listing(&writer, "the writing handle", epoch, &expected).await?;
            expect_listing(&other, "another handle", epoch, &expected).await?;
            agrees_with_reads(&other, epoch, &expected).await?;
        }
        if fencing {
            // A raise, then a write below it: refused, and never listed.
            let vnode = VNODES - 1;
            writer
                .persist_authoritative_version(2)
                .await
                .ctx(|| "persist_authoritative_version(2)".to_owned())?;
            let refused = writer
                .write_partial(vnode, EPOCHS, 1, value(EPOCHS, vnode))
                .await;
            ensure!(
                refused.is_err(),
                "a write at version 1 below the fence 2 was accepted: {}",
                describe(&refused)
            );
            expect_listing(&other, "another handle, after a refused write", EPOCHS, &[]).await?;
        }
        writer
            .prune_before(before)
            .await
            .ctx(|| format!("prune_before({before})"))?;
        let late = open(&*store, &format!("{tag}-late"), VNODES).await?;
        for epoch in 0..=EPOCHS {
            let expected = written(epoch, before);
            let what = format!("a handle opened after prune_before({before})");
            expect_listing(&late, &what, epoch, &expected).await?;
            expect_listing(
                &writer,
                "the writing handle, after the prune",
                epoch,
                &expected,
            )
            .await?;
        }
        other
            .prune_before(u64::MAX)
            .await
            .ctx(|| "prune_before(u64::MAX)".to_owned())?;
        for epoch in 0..=EPOCHS {
            expect_listing(&writer, "after prune_before(u64::MAX)", epoch, &[]).await?;
        }
        Ok(())
    })
    .await
}

/// `handle.partials(epoch)` is exactly `Some(expected)` (`expected` in
/// ascending order).
async fn expect_listing(
    handle: &Arc<dyn StateBackend>,
    through: &str,
    epoch: u64,
    expected: &[u32],
) -> Checked {
    let listed = handle
        .partials(epoch)
        .await
        .ctx(|| format!("partials({epoch}) through {through}"))?;
    let Some(listed) = listed else {
        return Err(format!(
            "partials({epoch}) through {through} is None (\"cannot enumerate\"), but the \
             backend claims `list_partials`"
        ));
    };
    ensure!(
        listed == expected,
        "partials({epoch}) through {through} is {listed:?}, expected {expected:?} \
         (exactly the vnodes written at that epoch and not pruned, ascending)"
    );
    Ok(())
}

/// Every vnode listed is found by `read_partial`, and a few not listed are
/// not.
async fn agrees_with_reads(handle: &Arc<dyn StateBackend>, epoch: u64, listed: &[u32]) -> Checked {
    let listed: BTreeSet<u32> = listed.iter().copied().collect();
    let probes: BTreeSet<u32> = listed
        .iter()
        .copied()
        .chain([0, VNODES / 2, VNODES - 1])
        .collect();
    for vnode in probes {
        let held = read(handle, vnode, epoch).await?;
        ensure!(
            held.is_some() == listed.contains(&vnode),
            "partials({epoch}) {} vnode {vnode}, but read_partial({vnode}, {epoch}) found {}",
            if listed.contains(&vnode) {
                "lists"
            } else {
                "does not list"
            },
            if held.is_some() { "bytes" } else { "nothing" }
        );
    }
    Ok(())
}
