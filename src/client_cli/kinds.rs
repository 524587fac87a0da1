//! `ferry kinds` and `ferry tag`: the kinds a server serves, their versions, tags and workers,
//! and moving a tag (deploying a version).

use clap::Args;
use ferry_client::types::{Kind, TagIn};

use super::{
    Context,
    output::{Failure, print_json},
};

#[derive(Debug, Args)]
pub struct KindsArgs {
    /// Show one kind, with its latest tag moves.
    #[arg(value_name = "KIND")]
    pub kind: Option<String>,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[arg(value_name = "KIND")]
    pub kind: String,
    #[arg(value_name = "TAG")]
    pub tag: String,
    /// The version the tag points at from now on.
    #[arg(value_name = "VERSION", required_unless_present = "delete")]
    pub version: Option<String>,
    /// Delete the tag instead.
    #[arg(long, conflicts_with = "version")]
    pub delete: bool,
}

pub async fn kinds(ctx: &Context, args: KindsArgs) -> Result<(), Failure> {
    let client = &ctx.client;
    let Some(kind) = args.kind else {
        let list = client.list_kinds().send().await;
        let list = list.map_err(|e| ctx.failed(e))?.into_inner();
        if ctx.json {
            print_json(&list);
            return Ok(());
        }
        for kind in &list.items {
            print!("{}", describe(kind));
        }
        for worker in &list.workers {
            println!("worker {}  serves {}", worker.id, worker.serves.join(", "));
        }
        return Ok(());
    };
    let found = client.get_kind().kind(kind.as_str()).send().await;
    let found = found.map_err(|e| ctx.failed(e))?.into_inner();
    let moves = client
        .list_tag_moves()
        .kind(kind.as_str())
        .limit(std::num::NonZeroU64::new(10).expect("10 is not 0"))
        .send()
        .await;
    let moves = moves.map_err(|e| ctx.failed(e))?.into_inner();
    if ctx.json {
        print_json(&serde_json::json!({"kind": found, "tag_moves": moves.items}));
        return Ok(());
    }
    print!("{}", describe(&found));
    for m in &moves.items {
        let from = m.from_version.as_deref().unwrap_or("-");
        let to = m.to_version.as_deref().unwrap_or("-");
        println!(
            "  moved {} {from} -> {to}  {} by {}",
            m.tag, m.moved_at, m.moved_by
        );
    }
    Ok(())
}

pub async fn tag(ctx: &Context, args: TagArgs) -> Result<(), Failure> {
    let client = &ctx.client;
    let (kind, tag) = (args.kind.as_str(), args.tag.as_str());
    let Some(version) = args.version else {
        let deleted = client.delete_tag().kind(kind).tag(tag).send().await;
        deleted.map_err(|e| ctx.failed(e))?;
        if ctx.json {
            print_json(&serde_json::json!({"kind": kind, "deleted": tag}));
        } else {
            println!("{kind}: tag {tag} deleted");
        }
        return Ok(());
    };
    let body = TagIn {
        version: version
            .parse()
            .map_err(|e| Failure::Usage(format!("{version:?} is not a version name: {e}")))?,
    };
    let moved = client.put_tag().kind(kind).tag(tag).body(body).send().await;
    let moved = moved.map_err(|e| ctx.failed(e))?.into_inner();
    if ctx.json {
        print_json(&moved);
    } else {
        println!("{kind}: {tag} -> {}", moved.version);
    }
    Ok(())
}

/// A kind in a few lines: its versions (with their workers), its tags, what it resolves to.
fn describe(kind: &Kind) -> String {
    let mut text = kind.kind.to_string();
    if let Some(to) = &kind.resolves_to {
        text.push_str(&format!(" -> {to}"));
    }
    text.push_str(&format!("  (workers: {})\n", kind.served_by.len()));
    for version in &kind.versions {
        text.push_str(&format!(
            "  version {}  workers: {}\n",
            version.name,
            version.served_by.len()
        ));
    }
    for tag in &kind.tags {
        text.push_str(&format!(
            "  tag {} -> {}  ({} by {})\n",
            tag.tag, tag.version, tag.moved_at, tag.moved_by
        ));
    }
    text
}
