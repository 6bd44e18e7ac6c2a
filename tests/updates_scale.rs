//! Benchmark, not part of the suite (`#[ignore]`d): 200 distinct images in the
//! local registry, one container each, one update round from cold. Prints the
//! round's duration and counts dockside's requests in the registry's access log.
//!
//! scripts/test-env.sh && cargo test --release --test updates_scale -- --ignored --nocapture

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The longest `update round done … elapsed_ms=N` in dockside's log.
fn longest_round_ms(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("update round done"))
        .filter_map(|l| {
            l.split("elapsed_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test updates_scale -- --ignored --nocapture"]
async fn one_round_over_200_distinct_images() {
    let n: usize = std::env::var("SCALE_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ct = Containers::new(&unique("dsi"));
    let reg = Registry::start();
    let h = reg.host();
    let base_img = format!("{h}/seed:1");
    build_image(&base_img);
    println!("pushing {n} images…");
    let tags: Vec<String> = (0..n).map(|i| format!("{h}/img{i}:1")).collect();
    std::thread::scope(|s| {
        for chunk in tags.chunks(n.div_ceil(6)) {
            let base_img = base_img.clone();
            s.spawn(move || {
                for t in chunk {
                    docker(&["tag", &base_img, t]);
                    docker(&["push", t]);
                }
            });
        }
    });
    println!("creating {n} containers…");
    for (i, t) in tags.iter().enumerate() {
        docker(&["create", "--name", &ct.name(&i.to_string()), t]);
    }
    let broker = Broker::start();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(broker.port, &format!("{base}/+/+/update")).await;
    let started = Instant::now();
    let d = Dockside::start(
        dir.path(),
        &base_config(&broker, &base, &dir.path().join("state"), &ct.prefix),
    );
    c.wait_until(
        &format!("{n} up_to_date"),
        Duration::from_secs(120),
        |all| {
            all.iter()
                .filter(|m| m.json()["status"] == "up_to_date")
                .count()
                >= n
        },
    )
    .await;
    let total = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (heads, gets) = reg.manifest_requests();
    let round_ms = longest_round_ms(&d.log_text());
    println!(
        "\nupdate watcher: {n} distinct images, one round from cold: {round_ms} ms (all {n} statuses published {:.2} s after start, including the initial sync and the 2 s inventory debounce); registry saw {heads} manifest HEADs and {gets} manifest GETs",
        total.as_secs_f64()
    );
    assert_eq!((heads, gets), (n, 0));
}

/// SPEC §17 cost of tag following: `SCALE_FOLLOWED` (default 50) repositories
/// of 6 tags each, one container each on the oldest tag with
/// `dockside.follow=semver`; one round from cold. Prints the round's time
/// and dockside's registry requests per image (HEAD, tag list, manifest GET).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test updates_scale -- --ignored --nocapture"]
async fn one_round_over_50_followed_images() {
    let n: usize = std::env::var("SCALE_FOLLOWED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let versions = ["1.0.0", "1.0.1", "1.1.0", "1.2.0", "2.0.0", "2.0.1"];
    let ct = Containers::new(&unique("dsf"));
    let reg = Registry::start();
    let h = reg.host();
    let base_img = format!("{h}/seed:1");
    build_image(&base_img);
    println!("pushing {n} repositories × {} tags…", versions.len());
    let repos: Vec<String> = (0..n).map(|i| format!("{h}/fol{i}")).collect();
    std::thread::scope(|s| {
        for chunk in repos.chunks(n.div_ceil(6)) {
            let base_img = base_img.clone();
            s.spawn(move || {
                for r in chunk {
                    for v in versions {
                        docker(&["tag", &base_img, &format!("{r}:{v}")]);
                        docker(&["push", &format!("{r}:{v}")]);
                    }
                }
            });
        }
    });
    for (i, r) in repos.iter().enumerate() {
        docker(&[
            "create",
            "--label",
            "dockside.follow=semver",
            "--name",
            &ct.name(&i.to_string()),
            &format!("{r}:1.0.0"),
        ]);
    }
    let broker = Broker::start();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let c = Collector::start(broker.port, &format!("{base}/+/+/update")).await;
    let started = Instant::now();
    let d = Dockside::start(
        dir.path(),
        &base_config(&broker, &base, &dir.path().join("state"), &ct.prefix),
    );
    c.wait_until(
        &format!("{n} offering 2.0.1"),
        Duration::from_secs(120),
        |all| {
            all.iter()
                .filter(|m| m.json()["latest_version"] == "2.0.1")
                .count()
                >= n
        },
    )
    .await;
    let total = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (heads, gets) = reg.manifest_requests();
    let lists = reg
        .dockside_requests()
        .iter()
        .filter(|r| r.contains("/tags/list"))
        .count();
    let round_ms = longest_round_ms(&d.log_text());
    println!(
        "\ntag following: {n} followed images, one round from cold: {round_ms} ms (all {n} statuses published {:.2} s after start); registry saw {heads} manifest HEADs, {lists} tag lists, {gets} manifest GETs ({:.1} requests per image)",
        total.as_secs_f64(),
        (heads + lists + gets) as f64 / n as f64
    );
    assert_eq!((heads, lists, gets), (n, n, 0));
}
