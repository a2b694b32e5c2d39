//! Fuzz target `rpc_records`: bytes from the mount target or the kernel as partition
//! multiplexing reads them (tunnel/src/partition.rs): ONC RPC record framing
//! (`record_len`, `record_head`, `record_body`, the async `RecordReader` the data path
//! uses), and each record's body as the reply to a `bind_client_to_partition` call
//! (`parse_bind_reply`).
//!
//! The input's first byte picks the record size limit (64 bytes, 4 KiB or the real
//! `MAX_RECORD`), so that the limit is met often. Checks beyond no panic, no hang and
//! bounded memory: `RecordReader` returns exactly the records `record_len` delimits, in
//! order, and fails exactly where they stop (a record cut short, or over the limit); a
//! record is never longer than the limit, its body never longer than the record; a
//! parsed reply never asks for more than `MAX_CONNECTIONS_CAP` connections or none; and
//! `watch::RpcScanner`, fed the stream as far as `left_in_record` allows each time (as a
//! lone bound connection's byte pump stops for a scale-up, mux.rs), stands between
//! records exactly at the ends of the records `record_len` delimits, never inside one.

#![no_main]

use std::sync::OnceLock;

use efs_tunnel::partition::{
    parse_bind_reply, record_body, record_head, record_len, RecordReader, MAX_CONNECTIONS_CAP,
    MAX_RECORD,
};
use efs_tunnel::watch::RpcScanner;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = [64, 4096, MAX_RECORD][usize::from(pick % 3)];

    // The records as the pure framing delimits them.
    let mut framed = Vec::new();
    let mut rest = stream;
    let ends_cleanly = loop {
        match record_len(rest, max) {
            Ok(Some(n)) => {
                assert!(
                    n >= 4 && n <= rest.len() && n <= max,
                    "{n} of {}",
                    rest.len()
                );
                let (record, after) = rest.split_at(n);
                let body = record_body(record);
                assert!(body.len() + 4 <= record.len());
                if let Some((xid, _)) = record_head(record) {
                    if let Ok(reply) = parse_bind_reply(&body, xid) {
                        let m = reply.scale_up.max_connections;
                        assert!((1..=MAX_CONNECTIONS_CAP).contains(&m), "{m}");
                    }
                }
                framed.push(record);
                rest = after;
            }
            Ok(None) => break rest.is_empty(),
            Err(_) => break false,
        }
    };
    let _ = parse_bind_reply(stream, 0);

    // The byte pump's stops.
    let ends: Vec<usize> = framed
        .iter()
        .scan(0, |at, r| {
            *at += r.len();
            Some(*at)
        })
        .collect();
    let covered = ends.last().copied().unwrap_or(0);
    let mut scanner = RpcScanner::default();
    let mut pos = 0;
    while pos < covered {
        let n = scanner.left_in_record().max(1);
        assert!(
            pos + n <= covered,
            "told to read past a record's end at {pos}"
        );
        scanner.feed(&stream[pos..pos + n]);
        pos += n;
        assert_eq!(scanner.between_records(), ends.contains(&pos), "at {pos}");
    }

    // The same bytes through the reader the data path uses.
    runtime().block_on(async {
        let mut reader = RecordReader::new(stream, max);
        for want in &framed {
            let got = reader.next().await.expect("a record record_len found");
            assert_eq!(got.as_deref(), Some(*want));
        }
        match reader.next().await {
            Ok(None) => assert!(ends_cleanly, "the reader ended where framing did not"),
            Ok(Some(_)) => panic!("the reader found a record framing did not"),
            Err(_) => assert!(!ends_cleanly, "the reader failed on a clean end"),
        }
    });
});
