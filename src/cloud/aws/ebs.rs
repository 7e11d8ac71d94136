//! The EBS direct APIs through the SDK: ListSnapshotBlocks and GetSnapshotBlock, the
//! block data drained as it arrives (only its checksum is kept).

use aws_sdk_ebs::Client;

use super::error::{bad_answer, from_sdk};
use crate::cloud::{BlockChecksum, BlockPage, CloudResult};
use crate::ids::SnapshotId;

/// ListSnapshotBlocks: one page.
pub(crate) async fn list_snapshot_blocks(
    client: &Client,
    id: &SnapshotId,
    start: Option<u64>,
    next_token: Option<&str>,
    max_results: u32,
) -> CloudResult<BlockPage> {
    const ACTION: &str = "ebs:ListSnapshotBlocks";
    let start = start.map(|s| i32::try_from(s).map_err(|_| bad_answer(ACTION, "a block index past 2^31")));
    let out = client
        .list_snapshot_blocks()
        .snapshot_id(id.as_str())
        .max_results(max_results.clamp(100, 10_000) as i32)
        .set_next_token(next_token.map(str::to_owned))
        .set_starting_block_index(start.transpose()?)
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    let mut blocks = Vec::with_capacity(out.blocks().len());
    for b in out.blocks() {
        let (Some(i), Some(t)) = (b.block_index(), b.block_token()) else {
            return Err(bad_answer(ACTION, "a block without index or token"));
        };
        let i = u64::try_from(i).map_err(|_| bad_answer(ACTION, "a negative block index"))?;
        blocks.push((i, t.to_owned()));
    }
    Ok(BlockPage {
        blocks,
        next_token: out.next_token().filter(|t| !t.is_empty()).map(str::to_owned),
        volume_size_gib: out.volume_size().unwrap_or(0),
        block_size: out.block_size().and_then(|b| u32::try_from(b).ok()).unwrap_or(0),
    })
}

/// GetSnapshotBlock: the checksum and data length; the data is read and dropped.
pub(crate) async fn get_snapshot_block(
    client: &Client,
    id: &SnapshotId,
    index: u64,
    token: &str,
) -> CloudResult<BlockChecksum> {
    const ACTION: &str = "ebs:GetSnapshotBlock";
    let index = i32::try_from(index).map_err(|_| bad_answer(ACTION, "a block index past 2^31"))?;
    let mut out = client
        .get_snapshot_block()
        .snapshot_id(id.as_str())
        .block_index(index)
        .block_token(token)
        .send()
        .await
        .map_err(|e| from_sdk(ACTION, e))?;
    while let Some(chunk) =
        out.block_data.try_next().await.map_err(|_| bad_answer(ACTION, "the block data broke off"))?
    {
        drop(chunk);
    }
    let checksum = out.checksum().ok_or_else(|| bad_answer(ACTION, "no x-amz-Checksum"))?.to_owned();
    let data_length = out.data_length().and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    Ok(BlockChecksum { checksum, data_length })
}
